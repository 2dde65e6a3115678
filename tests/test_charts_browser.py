"""The metric charts in real headless Chromium against a real server and worker: every numeric column of a
run's history (losses, learning rates, seconds, samples/s) can be drawn, hovered, put on a log scale and
smoothed, on the run page and overlaid per run on the compare page.

The values are read back from what the page draws and shows (path coordinates, the tooltip's data-value and
data-raw) and checked against the history the API returns. With LATENTFORGE_UPDATE_DOCS=1 the final
screenshots are also copied to docs/screenshots/charts-run.png and charts-compare.png (the README's).
"""

from __future__ import annotations

import math
import os
import re
import shutil

import pytest

from tests.stack import REPO
from tests.test_gallery_browser import ARGS, CHROMIUM, SHOTS, shot, signed_in_page

TOKEN = "charts-token-3b8e"
DOCS_SHOTS = REPO / "docs" / "screenshots"
EPOCHS = 3
# Small and quick: a narrow trunk and big batches, so that each run takes seconds on two shared cores.
TINY = {"epochs": EPOCHS, "hidden": [32], "batch_size": 2048, "device": "cpu"}


@pytest.fixture(scope="module")
def stack(stack_factory):
    return stack_factory("embedded", token=TOKEN)


@pytest.fixture(scope="module")
def runs(stack):
    """A plain AE (one optimizer: lr) and an adversarial AE (three: lr, lr_disc, lr_gen), both finished."""
    submitted = [stack.submit("train", {**TINY, "lr": 0.002}, name="ae tiny"),
                 stack.submit("train", {**TINY, "model": "aae", "disc_lr": 0.0005}, name="aae tiny")]
    finished = [stack.wait_job(job["id"]) for job in submitted]
    for job in finished:
        assert job["state"] == "succeeded", job.get("error")
        assert [row["epoch"] for row in job["progress"]["history"]] == list(range(1, EPOCHS + 1))
    return finished


@pytest.fixture(scope="module")
def page(stack):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        _, page = signed_in_page(browser, stack, TOKEN)
        yield page
        assert page.console.problems == [], page.console.problems
        browser.close()


def vertices(page, selector: str) -> list[tuple[float, float]]:
    """The viewBox coordinates of a drawn <path> (M x y L x y ...) or <polyline>."""
    element = page.locator(selector)
    assert element.count() == 1, selector
    text = element.get_attribute("d") or element.get_attribute("points")
    numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", text)]
    return list(zip(numbers[::2], numbers[1::2]))


def hover_vertex(page, selector: str, index: int) -> None:
    """Move the mouse onto the index-th vertex of a drawn series (from viewBox to page coordinates)."""
    page.locator(selector).scroll_into_view_if_needed()
    x, y = page.evaluate("""([selector, index]) => {
        const el = document.querySelector(selector);
        const [x, y] = el.getAttribute("d").match(/-?\\d+(?:\\.\\d+)?/g).map(Number).slice(2 * index, 2 * index + 2);
        const p = new DOMPoint(x, y).matrixTransform(el.ownerSVGElement.getScreenCTM());
        return [p.x, p.y];
    }""", [selector, index])
    page.mouse.move(x, y)


def tooltip(page, root: str) -> tuple[str, dict[tuple[str, str | None], dict[str, float]]]:
    """The tooltip's epoch line and its rows by (metric, run): the plotted value and the raw one."""
    tip = page.locator(f"{root} [data-role=chart-tooltip]")
    assert tip.is_visible()
    rows = tip.locator(".tip-row").evaluate_all(
        "rows => rows.map(r => [r.dataset.metric, r.dataset.run || null, r.dataset.value, r.dataset.raw])")
    return (tip.locator("[data-role=tooltip-epoch]").inner_text(),
            {(m, run): {"value": float(v), "raw": float(raw)} for m, run, v, raw in rows})


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average, as the chart computes it."""
    last, out = 0.0, []
    for i, value in enumerate(values, start=1):
        last = last * weight + (1 - weight) * value
        out.append(last / (1 - weight ** i))
    return out


def affine_in(ys: list[float], values: list[float]) -> bool:
    """Whether drawn y coordinates are an affine image of values (to the 0.1 px the path is written with)."""
    (y0, v0), (y1, v1) = (ys[0], values[0]), (ys[-1], values[-1])
    return all(abs(y0 + (v - v0) * (y1 - y0) / (v1 - v0) - y) < 0.3 for y, v in zip(ys, values))


def press(page, root: str, metric: str, on: bool) -> None:
    button = page.locator(f"{root} [data-role=metric-legend] button[data-metric={metric}]")
    if (button.get_attribute("aria-pressed") == "true") != on:
        button.click()
    assert button.get_attribute("aria-pressed") == ("true" if on else "false")


def publish(page, selector: str, name: str) -> None:
    """A screenshot of the chart's panel into test-output/screenshots/ and, when asked, the README's docs/screenshots/."""
    target = SHOTS / f"{name}.png"
    page.locator(selector).screenshot(path=str(target))
    if os.environ.get("LATENTFORGE_UPDATE_DOCS") == "1":  # a test run must not dirty the checkout
        shutil.copyfile(target, DOCS_SHOTS / f"{name}.png")


def test_the_run_page_charts_every_metric_with_hover_log_scale_and_smoothing(stack, runs, page):
    ae = runs[0]
    history = stack.job(ae["id"])["progress"]["history"]
    assert all(row["lr"] == 0.002 for row in history)  # the optimizer's learning rate, epoch by epoch
    root = "#loss-chart"
    page.goto(stack.url + f"/runs/{ae['id']}")
    legend = page.locator(f"{root} [data-role=metric-legend] button[data-metric]")
    pressed = dict(legend.evaluate_all("bs => bs.map(b => [b.dataset.metric, b.getAttribute('aria-pressed')])"))
    # Every numeric column is a metric, grouped by unit: losses, then the learning rate, then speed.
    assert list(pressed) == ["train_loss", "test_loss", "lr", "seconds", "samples_per_s"]
    assert [k for k, v in pressed.items() if v == "true"] == ["train_loss", "test_loss"]
    assert page.locator(f"{root} .metric-group-title").evaluate_all("ts => ts.map(t => t.textContent)") == \
        ["Losses and terms", "Learning rate", "Speed"]

    # Seconds alone: one panel, seconds on its axis.
    press(page, root, "seconds", True)
    press(page, root, "train_loss", False)
    press(page, root, "test_loss", False)
    panels = page.locator(f"{root} svg.line-chart")
    assert panels.count() == 1 and panels.first.get_attribute("data-family") == "seconds"
    assert "seconds per epoch" in panels.first.locator("text.axis").all_text_contents()
    seconds = [row["seconds"] for row in history]
    assert affine_in([y for _, y in vertices(page, f"{root} path[data-metric=seconds]")], seconds)

    # With the learning rate and the loss too: a panel per unit, stacked on one epoch axis.
    press(page, root, "lr", True)
    press(page, root, "train_loss", True)
    assert [panels.nth(i).get_attribute("data-family") for i in range(panels.count())] == ["metric", "lr", "seconds"]
    assert [p.get_attribute("data-metric") for p in page.locator(f"{root} svg path").all()] == ["train_loss", "lr", "seconds"]
    xs = {metric: [x for x, _ in vertices(page, f"{root} path[data-metric={metric}]")] for metric in ("train_loss", "lr", "seconds")}
    assert xs["train_loss"] == xs["lr"] == xs["seconds"]  # the panels share the x axis

    # Hover: the guide and the tooltip show the epoch and each visible series' value, as the API has them.
    hover_vertex(page, f"{root} path[data-metric=seconds]", 1)
    epoch, values = tooltip(page, root)
    assert epoch == "epoch 2"
    assert {key: v["raw"] for key, v in values.items()} == \
        {("train_loss", None): history[1]["train_loss"], ("lr", None): 0.002, ("seconds", None): history[1]["seconds"]}
    assert all(v["value"] == v["raw"] for v in values.values())  # no smoothing yet
    assert page.locator(f"{root} line.hover-guide").count() == 3  # one per panel
    assert {g.get_attribute("data-x") for g in page.locator(f"{root} line.hover-guide").all()} == {"2"}
    # The keyboard reads the same values: focus the plot, then End and the arrows.
    page.locator(f"{root} [data-role=chart-plot]").focus()
    page.keyboard.press("End")
    assert tooltip(page, root)[0] == "epoch 3"
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    epoch, values = tooltip(page, root)
    assert epoch == "epoch 1" and values[("seconds", None)]["raw"] == history[0]["seconds"]
    page.keyboard.press("Escape")
    assert page.locator(f"{root} [data-role=chart-tooltip]").is_hidden()

    # Log scale: the loss panel's y is then affine in log(loss), no longer in the loss.
    losses = [row["train_loss"] for row in history]
    linear = vertices(page, f"{root} path[data-metric=train_loss]")
    assert affine_in([y for _, y in linear], losses) and not affine_in([y for _, y in linear], [math.log10(v) for v in losses])
    page.locator(f"{root} [data-role=log-scale]").check()
    assert {p.get_attribute("data-scale") for p in panels.all()} == {"log"}
    logged = vertices(page, f"{root} path[data-metric=train_loss]")
    assert affine_in([y for _, y in logged], [math.log10(v) for v in losses]) and logged != linear
    page.locator(f"{root} [data-role=log-scale]").uncheck()
    assert vertices(page, f"{root} path[data-metric=train_loss]") == linear

    # Smoothing: the line becomes the debiased EMA, the raw values stay behind it as a faint polyline.
    assert page.locator(f"{root} polyline.raw-line").count() == 0
    page.locator(f"{root} [data-role=smoothing]").fill("0.6")
    assert page.locator(f"{root} [data-role=smoothing-value]").inner_text() == "0.60"
    smoothed = vertices(page, f"{root} path[data-metric=train_loss]")
    assert smoothed != linear and smoothed[0] == linear[0]  # debiased: the first point is the first value
    assert vertices(page, f"{root} polyline.raw-line[data-metric=train_loss]") == linear
    assert affine_in([y for _, y in smoothed], ema(losses, 0.6))
    hover_vertex(page, f"{root} path[data-metric=train_loss]", 2)
    epoch, values = tooltip(page, root)
    assert epoch == "epoch 3"
    assert values[("train_loss", None)]["raw"] == losses[2]
    assert values[("train_loss", None)]["value"] == pytest.approx(ema(losses, 0.6)[2], rel=1e-12)
    assert values[("lr", None)]["value"] == pytest.approx(0.002, rel=1e-12)  # a constant stays itself
    # Smoothing 0 draws the values as they are again.
    page.locator(f"{root} [data-role=smoothing]").fill("0")
    assert vertices(page, f"{root} path[data-metric=train_loss]") == linear
    assert page.locator(f"{root} polyline.raw-line").count() == 0

    # The choices survive a reload (this tab's sessionStorage), as at the end of a live run.
    page.locator(f"{root} [data-role=smoothing]").fill("0.5")
    press(page, root, "test_loss", True)
    page.reload()
    assert page.locator(f"{root} [data-role=smoothing]").input_value() == "0.5"
    assert [p.get_attribute("data-metric") for p in page.locator(f"{root} svg path").all()] == \
        ["train_loss", "test_loss", "lr", "seconds"]
    hover_vertex(page, f"{root} path[data-metric=test_loss]", 1)
    shot(page, "charts-run-page")
    publish(page, f"section:has({root})", "charts-run")


def test_compare_overlays_the_runs_with_the_same_controls(stack, runs, page):
    histories = {job["id"]: stack.job(job["id"])["progress"]["history"] for job in runs}
    ae, aae = (job["id"] for job in runs)
    root = "#compare-chart"
    page.goto(stack.url + f"/compare?ids={ae},{aae}")
    assert page.locator(f"{root} path").count() == 4  # train and test loss of each run
    metrics = page.locator(f"{root} [data-role=metric-legend] button[data-metric]").evaluate_all(
        "bs => bs.map(b => b.dataset.metric)")
    assert {"lr", "lr_disc", "lr_gen", "seconds", "samples_per_s", "train_disc_acc"} <= set(metrics)
    assert metrics.index("train_loss") < metrics.index("lr") < metrics.index("lr_disc") < metrics.index("seconds")

    press(page, root, "test_loss", False)
    press(page, root, "lr", True)
    press(page, root, "lr_disc", True)
    press(page, root, "samples_per_s", True)
    drawn = [(p.get_attribute("data-metric"), p.get_attribute("data-run")) for p in page.locator(f"{root} svg path").all()]
    assert drawn == [("train_loss", ae), ("train_loss", aae), ("lr", ae), ("lr", aae), ("lr_disc", aae),
                     ("samples_per_s", ae), ("samples_per_s", aae)]
    lr_axis = page.locator(f"{root} svg[data-family=lr] text.axis").all_text_contents()
    assert "learning rate" in lr_axis

    # Hover names each run's value at that epoch; the AAE's discriminator has its own learning rate.
    hover_vertex(page, f"{root} path[data-metric=lr][data-run='{aae}']", 2)
    epoch, values = tooltip(page, root)
    assert epoch == "epoch 3"
    assert {key: v["raw"] for key, v in values.items()} == {
        ("train_loss", ae): histories[ae][2]["train_loss"], ("train_loss", aae): histories[aae][2]["train_loss"],
        ("lr", ae): 0.002, ("lr", aae): 0.001, ("lr_disc", aae): 0.0005,
        ("samples_per_s", ae): histories[ae][2]["samples_per_s"], ("samples_per_s", aae): histories[aae][2]["samples_per_s"]}

    # Log scale and smoothing act on every run's lines.
    before = {run: vertices(page, f"{root} path[data-metric=train_loss][data-run='{run}']") for run in (ae, aae)}
    page.locator(f"{root} [data-role=log-scale]").check()
    for run in (ae, aae):
        losses = [row["train_loss"] for row in histories[run]]
        ys = [y for _, y in vertices(page, f"{root} path[data-metric=train_loss][data-run='{run}']")]
        assert affine_in(ys, [math.log10(v) for v in losses]) or len(set(losses)) == 1
    page.locator(f"{root} [data-role=log-scale]").uncheck()
    assert {run: vertices(page, f"{root} path[data-metric=train_loss][data-run='{run}']") for run in (ae, aae)} == before
    page.locator(f"{root} [data-role=smoothing]").fill("0.5")
    assert page.locator(f"{root} polyline.raw-line").count() == len(drawn)
    for run in (ae, aae):
        assert vertices(page, f"{root} polyline.raw-line[data-metric=train_loss][data-run='{run}']") == before[run]
    hover_vertex(page, f"{root} path[data-metric=train_loss][data-run='{ae}']", 1)
    epoch, values = tooltip(page, root)
    assert epoch == "epoch 2"
    for run in (ae, aae):
        expected = ema([row["train_loss"] for row in histories[run]], 0.5)[1]
        assert values[("train_loss", run)]["value"] == pytest.approx(expected, rel=1e-12)
    shot(page, "charts-compare-page")
    publish(page, f"section:has({root})", "charts-compare")
