"""The canvas page in a real browser: draw with a mouse or a finger, see the top 3, correct or confirm it."""
from __future__ import annotations

import base64
import copy
import io
import json
import urllib.request

import pytest

from doodle_lib import feedback, tracking
from doodle_lib.drawing import strokes_to_bitmap
from doodle_lib.settings import PROJECT_ROOT
from tests.conftest import CATEGORIES, fixture_drawings
from tests.webapp.serving import app_env, gunicorn_app, log_models, register

pytestmark = pytest.mark.slow
SCREENSHOTS = PROJECT_ROOT / "tests" / "artifacts"
DRAWING = fixture_drawings()[27]  # (category, row, strokes)


def canvas_points(page, strokes, margin: float = 0.1):
    """Fixture strokes (0..255) as page coordinates inside the canvas."""
    box = page.locator("#canvas").bounding_box()
    scale = box["width"] * (1 - 2 * margin) / 255
    left, top = box["x"] + box["width"] * margin, box["y"] + box["height"] * margin
    return [[(left + x * scale, top + y * scale) for x, y in zip(xs, ys)] for xs, ys, *_ in strokes]


def touch(cdp, points) -> None:
    """One finger down at the first point, moved through the others, lifted (Playwright itself only taps)."""
    (x, y), rest = points[0], points[1:]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y, "id": 1}]})
    for x, y in rest:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y, "id": 1}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def stored(settings) -> list[dict]:
    return [feedback.read(settings.feedback_dir, ref)[1] for ref in feedback.complete(settings.feedback_dir)]


def saved_record(page, settings) -> dict:
    """The one drawing on disk, once the page has confirmed the save."""
    page.locator("#message.ok").wait_for(timeout=10_000)
    [record] = stored(settings)
    return record


def test_mouse_drawing_predicts_and_a_correction_is_saved(browser, webapp_url, settings, versions):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    assert page.locator("#model-version").inner_text() == versions[0]
    for stroke in canvas_points(page, DRAWING[2]):
        page.mouse.move(*stroke[0])
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*point, steps=2)
        page.mouse.up()
    page.locator("#predictions li").nth(2).wait_for(timeout=10_000)
    # Guesses about the first strokes stay shown until the answer about all of them arrives, which enables Right.
    page.wait_for_function(ENABLED, arg="right", timeout=10_000)
    top = page.locator("#predictions li").first.get_attribute("data-label")
    assert top in CATEGORIES
    assert page.locator("#bitmap").is_visible()
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "webapp-desktop.png"))
    correct = next(name for name in CATEGORIES if name != top)
    page.select_option("#wrong-label", correct)
    page.click("#wrong")
    page.locator("#message.ok").wait_for(timeout=10_000)
    assert f'Saved as "{correct}"' in page.locator("#message").inner_text()
    [record] = stored(settings)
    assert (record["label"], record["predicted_label"], record["kind"]) == (correct, top, "correction")
    assert record["model_version"] == versions[0] and len(record["strokes"]) == len(DRAWING[2])
    assert (settings.feedback_dir / correct / f"{record['id']}.png").is_file()
    page.screenshot(path=str(SCREENSHOTS / "webapp-desktop-saved.png"))
    page.close()


def test_touch_drawing_on_a_phone_and_confirming(browser, webapp_url, settings, versions):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(webapp_url)
    cdp = context.new_cdp_session(page)
    for stroke in canvas_points(page, DRAWING[2]):
        touch(cdp, stroke)
    page.locator("#predictions li").nth(2).wait_for(timeout=10_000)
    page.wait_for_function(ENABLED, arg="right", timeout=10_000)  # the answer about every stroke is in
    top = page.locator("#predictions li").first.get_attribute("data-label")
    # The page fits the phone: nothing wider than the viewport, the buttons reachable.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "webapp-phone.png"), full_page=True)
    # Taps after a CDP touch drag produce no click in headless chromium (pointerdown arrives, click never):
    # the drawing is by touch, the button press by a click.
    page.locator("#right").click()
    page.wait_for_function("() => document.getElementById('message').textContent !== ''", timeout=10_000)
    assert "confirmed" in page.locator("#message").inner_text(), page.locator("#message").inner_text()
    # The thanks is in view: the canvas, now empty, is what the phone shows, and the message sits below it.
    shown = page.evaluate("(({top, bottom}) => [top, bottom])(document.getElementById('message').getBoundingClientRect())")
    assert 0 <= shown[0] and shown[1] <= 844, shown
    [record] = stored(settings)
    assert (record["label"], record["predicted_label"], record["kind"]) == (top, top, "confirmed")
    assert len(record["strokes"]) == len(DRAWING[2])
    assert page.locator("#predictions li").count() == 0  # cleared for the next drawing
    context.close()


@pytest.mark.parametrize("width, height", [(375, 667), (667, 375)])
def test_on_a_small_phone_the_answer_controls_are_in_view(browser, webapp_url, versions, width, height):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(webapp_url)
    draw_with_mouse(page, DRAWING[2])
    page.locator("#predictions li").nth(2).wait_for(timeout=10_000)
    bottoms = page.evaluate("['right', 'wrong-label', 'wrong', 'message', 'canvas', 'picture-button'].map("
                            "id => document.getElementById(id).getBoundingClientRect().bottom)")
    assert page.evaluate("window.scrollY") == 0 and max(bottoms) <= height, bottoms  # no scrolling to answer
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert page.locator("#canvas").bounding_box()["width"] >= 240  # still room to draw
    page.close()


def test_on_a_small_phone_a_long_reason_keeps_the_header_on_one_line(browser, settings, tmp_path):
    """With the registry out of reach the header says why, and the reason holds its error: cut short, not wrapped."""
    from tests.services import free_port

    settings.tracking_uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with gunicorn_app(app_env(settings, poll_seconds=1), tmp_path) as url:
        page = browser.new_page(viewport={"width": 375, "height": 667})
        page.goto(url)
        page.wait_for_function("document.getElementById('model').title.includes('does not answer (') "
                               "&& !document.getElementById('model').title.includes('(starting)')", timeout=30_000)
        line = page.locator("#model")
        assert line.evaluate("p => p.scrollWidth > p.clientWidth")  # longer than the screen...
        assert line.bounding_box()["height"] < 2 * float(line.evaluate("p => parseFloat(getComputedStyle(p).lineHeight)"))
        draw_with_mouse(page, DRAWING[2])
        page.locator("#message.error").wait_for(timeout=10_000)  # no prediction without a model, said plainly
        bottoms = page.evaluate("['wrong-label', 'wrong', 'message'].map("
                                "id => document.getElementById(id).getBoundingClientRect().bottom)")
        assert max(bottoms) <= 667, bottoms  # ...and the correction stays in view
        page.close()


def test_none_of_these_proposes_a_typed_category(browser, webapp_url, settings, versions):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    for stroke in canvas_points(page, DRAWING[2]):
        page.mouse.move(*stroke[0])
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*point, steps=2)
        page.mouse.up()
    page.locator("#predictions li").nth(2).wait_for(timeout=10_000)
    assert page.locator("#new-label").is_hidden()
    page.select_option("#wrong-label", label="none of these: name it")
    assert page.locator("#new-label").is_visible()
    page.fill("#new-label", "../dog")
    page.click("#wrong")
    page.locator("#message.error").wait_for(timeout=10_000)
    assert "letters a-z" in page.locator("#message").inner_text()
    assert not settings.proposals_dir.exists()
    page.fill("#new-label", "  Dogs ")
    page.click("#wrong")
    page.locator("#message.ok").wait_for(timeout=10_000)
    assert 'proposed category "dogs" (1 drawing so far)' in page.locator("#message").inner_text()
    [ref] = feedback.complete(settings.proposals_dir)
    record = feedback.read(settings.proposals_dir, ref)[1]
    assert (ref.category, record["proposed_as"], record["kind"]) == ("dogs", "  Dogs ", "proposal")
    assert record["predicted_label"] in CATEGORIES and len(record["strokes"]) == len(DRAWING[2])
    assert feedback.complete(settings.feedback_dir) == []
    page.locator('#proposal-names option[value="dogs"]').wait_for(state="attached", timeout=10_000)  # suggested now
    page.close()


def draw_with_mouse(page, strokes) -> None:
    for stroke in canvas_points(page, strokes):
        page.mouse.move(*stroke[0])
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*point, steps=2)
        page.mouse.up()


def test_a_late_answer_is_dropped_and_a_lost_save_says_so(browser, webapp_url, settings, versions):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    held = []
    page.route("**/api/predict", lambda route: held.append(route))  # answers wait here until released
    draw_with_mouse(page, DRAWING[2][:1])
    while not held:
        page.wait_for_timeout(20)
    page.click("#clear")
    with page.expect_response("**/api/predict"):
        for route in held:
            route.continue_()
    page.wait_for_timeout(300)  # the page has the answer now; it must not show it on the empty canvas
    assert page.locator("#predictions li").count() == 0 and page.locator("#right").is_disabled()
    page.unroute("**/api/predict")

    draw_with_mouse(page, DRAWING[2])
    page.locator("#predictions li").nth(2).wait_for(timeout=10_000)
    page.route("**/api/feedback", lambda route: route.abort("connectionrefused"))
    page.click("#right")
    page.locator("#message.error").wait_for(timeout=10_000)
    assert "not saved" in page.locator("#message").inner_text()
    assert stored(settings) == [] and page.locator("#predictions li").count() == 3  # the drawing is still there
    page.close()


def test_a_save_whose_answer_was_lost_is_stored_once_when_sent_again(browser, webapp_url, settings, versions):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    draw_with_mouse(page, DRAWING[2])
    page.wait_for_function(ENABLED, arg="right", timeout=10_000)

    def lose_the_answer(route):
        route.fetch()  # the server stores the drawing and answers...
        route.abort("connectionreset")  # ...and the answer never reaches the page

    page.route("**/api/feedback", lose_the_answer)
    page.click("#right")
    page.locator("#message.error").wait_for(timeout=10_000)
    assert "not saved" in page.locator("#message").inner_text() and len(stored(settings)) == 1
    page.unroute("**/api/feedback")
    page.click("#right")  # what a person does on "not saved: ... try again"
    record = saved_record(page, settings)  # one drawing on disk, the one the first click stored
    assert page.locator("#message").get_attribute("data-id") == f"{record['label']}/{record['id']}"
    page.close()


def test_a_picture_gets_guesses_and_nothing_to_save(browser, webapp_url, settings, versions, tmp_path):
    """A doodle on paper, as a dark-on-light PNG of 280 px, replaces the drawing; the guesses are the API's."""
    from PIL import Image

    photo = Image.fromarray(255 - strokes_to_bitmap(DRAWING[2])).resize((280, 280), Image.BILINEAR)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    (tmp_path / "doodle.png").write_bytes(buffer.getvalue())
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    request = urllib.request.Request(f"{webapp_url}/api/predict", json.dumps({"image": image, "k": 3}).encode(),
                                     {"Content-Type": "application/json"})
    expected = [guess["label"] for guess in json.load(urllib.request.urlopen(request, timeout=10))["predictions"]]
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    draw_with_mouse(page, DRAWING[2][:2])
    page.wait_for_function(ENABLED, arg="right", timeout=10_000)
    (tmp_path / "notes.png").write_text("not a picture")
    page.set_input_files("#picture", str(tmp_path / "notes.png"))
    page.locator("#message.error").wait_for(timeout=10_000)
    assert page.locator("#message").inner_text().startswith("no prediction for the picture: ")
    assert has_ink(page) and page.locator("#right").is_enabled()  # a refused picture leaves the drawing as it was
    page.set_input_files("#picture", str(tmp_path / "doodle.png"))
    page.locator("#message", has_text="The guesses are about the picture").wait_for(timeout=10_000)
    labels = page.locator("#predictions li").evaluate_all("items => items.map(item => item.dataset.label)")
    assert labels == expected
    assert page.locator("#right").is_disabled() and page.locator("#wrong").is_disabled()  # feedback needs strokes
    assert not has_ink(page) and stored(settings) == []  # the picture replaced the drawing
    page.close()


def has_ink(page) -> bool:
    return page.evaluate("() => { const c = document.getElementById('canvas');"
                         " return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v > 0); }")


def test_a_second_finger_does_not_draw(browser, webapp_url, settings, versions):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(webapp_url)
    cdp = context.new_cdp_session(page)
    [first], [second] = canvas_points(page, DRAWING[2][:1]), canvas_points(page, DRAWING[2][1:2])
    steps = min(len(first), len(second))
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": first[0][0], "y": first[0][1], "id": 1}]})
    for (x1, y1), (x2, y2) in zip(first[1:steps], second[1:steps]):
        points = [{"x": x1, "y": y1, "id": 1}, {"x": x2, "y": y2, "id": 2}]
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": points})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    page.locator("#predictions li").nth(2).wait_for(timeout=10_000)
    page.locator("#right").click()
    record = saved_record(page, settings)
    assert len(record["strokes"]) == 1 and len(record["strokes"][0][0]) == steps  # the first finger's points only
    context.close()


ENABLED = "id => !document.getElementById(id).disabled"
FAKE = {1: ("cat", "7"), 2: ("fish", "8")}  # stroke count -> the answer the test gives: told apart in what is saved


def hold_predictions(page) -> list:
    """Requests to /api/predict wait in the returned list until the test answers them."""
    held = []
    page.route("**/api/predict", lambda route: held.append(route))
    return held


def wait_held(page, held, strokes: int) -> None:
    """Until a held request is about `strokes` strokes."""
    for _ in range(500):
        if any(len(route.request.post_data_json["strokes"]) == strokes for route in held):
            return
        page.wait_for_timeout(20)
    raise AssertionError(f"no request about {strokes} strokes")


def answer(held, strokes: int | None = None) -> None:
    """Answer the held requests (only those about `strokes` strokes if given) with FAKE's label and version."""
    for route in [r for r in held if strokes in (None, len(r.request.post_data_json["strokes"]))]:
        held.remove(route)
        label, version = FAKE[len(route.request.post_data_json["strokes"])]
        route.fulfill(json={"model_version": version, "predictions": [{"label": label, "probability": 0.9}],
                            "bitmap": base64.b64encode(bytes(28 * 28)).decode()})


def answer_until_enabled(page, held, button: str) -> None:
    """Answer requests as they are held until `button` is enabled: a slow page also asks in mid-stroke."""
    for _ in range(500):
        answer(held)
        if page.evaluate(ENABLED, button):
            return
        page.wait_for_timeout(20)
    raise AssertionError(f"#{button} stayed disabled")


def test_right_waits_for_the_answer_about_the_strokes_drawn(browser, webapp_url, settings):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    page.select_option("#wrong-label", "apple")  # chosen: Save waits for the answer alone
    held = hold_predictions(page)
    draw_with_mouse(page, DRAWING[2][:1])
    answer_until_enabled(page, held, "right")
    draw_with_mouse(page, DRAWING[2][1:2])
    # The "cat" shown is about the first stroke alone: nothing may be saved with it.
    assert page.locator("#right").is_disabled() and page.locator("#wrong").is_disabled()
    wait_held(page, held, 2)
    page.click("#undo")
    assert page.locator("#right").is_disabled()
    wait_held(page, held, 1)
    answer(held, 2)  # a late answer about the undone stroke
    page.wait_for_timeout(300)
    assert page.locator("#right").is_disabled()
    answer_until_enabled(page, held, "right")
    page.click("#right")
    record = saved_record(page, settings)
    assert [record[k] for k in ("label", "predicted_label", "model_version", "kind")] == \
        ["cat", "cat", "7", "confirmed"]
    assert len(record["strokes"]) == 1
    page.close()


def test_a_correction_after_undo_names_the_answer_about_what_is_left(browser, webapp_url, settings):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    held = hold_predictions(page)
    draw_with_mouse(page, DRAWING[2][:2])
    page.select_option("#wrong-label", "apple")
    answer_until_enabled(page, held, "wrong")
    page.click("#undo")
    assert page.locator("#wrong").is_disabled()  # "fish" is about both strokes
    answer_until_enabled(page, held, "wrong")
    page.click("#wrong")
    record = saved_record(page, settings)
    assert [record[k] for k in ("label", "predicted_label", "model_version", "kind")] == \
        ["apple", "cat", "7", "correction"]
    assert len(record["strokes"]) == 1
    page.close()


def test_an_html_error_page_clears_the_guesses(browser, webapp_url, settings):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    draw_with_mouse(page, DRAWING[2])
    page.locator("#predictions li").nth(2).wait_for(timeout=10_000)
    page.route("**/api/predict", lambda route: route.fulfill(
        status=502, content_type="text/html", body="<html><body><h1>502 Bad Gateway</h1></body></html>"))
    draw_with_mouse(page, DRAWING[2][:1])
    page.locator("#message.error").wait_for(timeout=10_000)
    assert "no prediction: the server answered 502" in page.locator("#message").inner_text()
    assert page.locator("#predictions li").count() == 0 and page.locator("#right").is_disabled()
    page.select_option("#wrong-label", "apple")
    page.click("#wrong")  # still labelled, without a prediction
    record = saved_record(page, settings)
    assert (record["predicted_label"], record["model_version"], record["kind"]) == (None, None, "unprompted")
    assert len(record["strokes"]) == len(DRAWING[2]) + 1
    page.close()


def test_ink_lands_under_the_pointer_inside_the_border(browser, webapp_url):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    border = page.evaluate("getComputedStyle(document.getElementById('canvas')).borderLeftWidth")
    assert border == "2px"
    for scale in (1, 0.5):  # the page's own size, then shrunk by a CSS transform
        page.click("#clear")
        page.evaluate(f"document.getElementById('canvas').style.cssText = "
                      f"'transform: scale({scale}); transform-origin: 0 0'")
        box = page.locator("#canvas").bounding_box()
        page.mouse.move(box["x"] + (2 + 40) * scale, box["y"] + (2 + 70) * scale)
        with page.expect_request("**/api/predict") as request:
            page.mouse.down()
            page.mouse.up()
        [[xs, ys, _]] = request.value.post_data_json["strokes"]
        assert (xs[0], ys[0]) == (pytest.approx(40, abs=0.5), pytest.approx(70, abs=0.5)), scale
    page.close()


def test_a_double_click_saves_one_drawing(browser, webapp_url, settings, versions):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    draw_with_mouse(page, DRAWING[2])
    page.wait_for_function(ENABLED, arg="right", timeout=10_000)
    page.dblclick("#right")
    saved_record(page, settings)
    page.wait_for_timeout(500)  # a second save would be on its way by now
    assert len(stored(settings)) == 1
    page.close()


def test_ink_drawn_while_a_save_is_on_its_way_stays_for_the_next_drawing(browser, webapp_url, settings, versions):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    draw_with_mouse(page, DRAWING[2])
    page.wait_for_function(ENABLED, arg="right", timeout=10_000)
    held = []
    page.route("**/api/feedback", lambda route: held.append(route))  # the save waits here until released
    page.click("#right")
    while not held:
        page.wait_for_timeout(20)
    draw_with_mouse(page, DRAWING[2][:1])  # the next drawing's first stroke, drawn meanwhile
    held[0].continue_()
    saved_record(page, settings)
    assert page.evaluate("strokes.length") == 1  # the saved strokes left the canvas, the new one did not
    page.locator("#predictions li").nth(2).wait_for(timeout=10_000)  # guesses about the stroke left
    [record] = stored(settings)
    assert len(record["strokes"]) == len(DRAWING[2])
    page.close()


def test_guesses_follow_a_long_stroke(browser, webapp_url, versions):
    """The page asks while the pen keeps moving, not only once it pauses: guesses show before the pen lifts."""
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    asked = []
    page.on("request", lambda request: asked.append(request) if request.url.endswith("/api/predict") else None)
    [stroke] = canvas_points(page, DRAWING[2][:1])
    page.mouse.move(*stroke[0])
    page.mouse.down()
    for i in range(40):  # 1.6 s of moving without a pause as long as the page waits for one
        x, y = stroke[i % len(stroke)]
        page.mouse.move(x + i, y)
        page.wait_for_timeout(40)
    # Asked while the pen never paused for the debounce's 120 ms (a pause would make the answer current).
    assert len(asked) >= 2, len(asked)
    page.locator("#predictions li").first.wait_for(timeout=10_000)
    page.mouse.up()
    page.wait_for_function(ENABLED, arg="right", timeout=10_000)
    page.close()


def test_a_server_out_of_reach_is_said_plainly_and_asked_again(browser, webapp_url, versions):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    page.route("**/api/predict", lambda route: route.abort("connectionrefused"))
    draw_with_mouse(page, DRAWING[2])
    page.locator("#message.error").wait_for(timeout=10_000)
    assert "can't reach the server" in page.locator("#message").inner_text()
    assert "TypeError" not in page.locator("#message").inner_text()
    page.unroute("**/api/predict")
    # The server is back: the same drawing is asked about again, without another stroke, and the error goes.
    page.locator("#predictions li").nth(2).wait_for(timeout=10_000)
    page.wait_for_function(ENABLED, arg="right", timeout=10_000)
    assert page.locator("#message").inner_text() == ""
    page.close()


def test_turning_the_phone_keeps_the_drawing_in_place(browser, webapp_url, versions):
    context = browser.new_context(viewport={"width": 844, "height": 390}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(webapp_url)
    cdp = context.new_cdp_session(page)
    for stroke in canvas_points(page, DRAWING[2], margin=0.05):
        touch(cdp, stroke)
    page.locator("#predictions li").nth(2).wait_for(timeout=10_000)
    before = page.evaluate("[canvas.clientWidth, strokes.map(([xs, ys]) => [xs.slice(), ys.slice()])]")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function(f"() => canvas.clientWidth !== {before[0]}")
    page.wait_for_timeout(100)  # the resize observer's turn
    after = page.evaluate("[canvas.clientWidth, strokes.map(([xs, ys]) => [xs.slice(), ys.slice()])]")
    factor = after[0] / before[0]
    assert factor != 1
    for (xs, ys), (new_xs, new_ys) in zip(before[1], after[1]):
        assert new_xs == pytest.approx([x * factor for x in xs]) and new_ys == pytest.approx([y * factor for y in ys])
    assert max(max(xs) for xs, _ in after[1]) <= after[0]  # all of it still on the canvas
    context.close()


def test_save_needs_a_chosen_category_and_enter_saves_a_typed_name(browser, webapp_url, settings, versions):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    right = page.locator("#right").bounding_box()
    draw_with_mouse(page, DRAWING[2])
    page.wait_for_function(ENABLED, arg="right", timeout=10_000)
    assert page.locator("#right").bounding_box() == right  # three guesses fit the room kept for them
    assert page.locator("#wrong").is_disabled()  # "choose..." is no category: nothing chosen, nothing to save
    page.select_option("#wrong-label", label="none of these: name it")
    page.fill("#new-label", "unicycle")
    page.press("#new-label", "Enter")
    page.locator("#message.ok").wait_for(timeout=10_000)
    assert 'proposed category "unicycle"' in page.locator("#message").inner_text()
    # Ready for the next drawing: nothing chosen, no name.
    assert page.evaluate("[wrongLabel.selectedIndex, newLabel.hidden, newLabel.value]") == [0, True, ""]
    page.close()


def test_a_screen_reader_hears_the_guesses_once_the_pen_lifts(browser, webapp_url):
    """The guesses list changes every few hundred ms while a stroke goes on; the live region speaks only after."""
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(webapp_url)
    assert page.get_attribute("#predictions", "aria-live") is None
    assert page.get_attribute("#canvas", "role") == "img"
    held = hold_predictions(page)
    [stroke] = canvas_points(page, DRAWING[2][:1])
    page.mouse.move(*stroke[0])
    page.mouse.down()
    for point in stroke[1:]:
        page.mouse.move(*point, steps=2)
    wait_held(page, held, 1)
    answer(held)  # an answer while the pen is still down: shown, not spoken
    page.locator("#predictions li").first.wait_for(timeout=10_000)
    assert page.text_content("#heard") == ""
    page.mouse.up()
    for _ in range(500):  # lifting the pen asks about the finished stroke
        answer(held)
        if page.text_content("#heard"):
            break
        page.wait_for_timeout(20)
    assert page.text_content("#heard") == "The model thinks: cat 90%"
    page.click("#clear")
    assert page.text_content("#heard") == ""
    page.close()


def test_an_open_page_follows_the_served_model(browser, settings, logged_models, trained_models, tmp_path):
    """A page opened before any model is in production learns of the first one, and then of a version with a new
    category (a label the correction list offers at once), without a reload."""
    first, _ = register(settings, logged_models, promote_first=False)
    grown = copy.deepcopy(trained_models[0])
    grown.add_categories(["dog"])
    [grown_version] = register(settings, log_models(settings, [grown]), promote_first=False)
    with gunicorn_app(app_env(settings, poll_seconds=1), tmp_path) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(url)
        assert page.locator("#no-model").inner_text() == "No model is in production yet: train and promote one."
        tracking.set_production(settings, first)
        page.wait_for_function(VERSION_SHOWN, arg=first, timeout=15_000)
        assert "Predictions are off" not in page.locator("#model").inner_text()
        assert labels_offered(page) == list(CATEGORIES)
        page.select_option("#wrong-label", "cat")
        tracking.set_production(settings, grown_version)
        page.wait_for_function(VERSION_SHOWN, arg=grown_version, timeout=15_000)
        assert labels_offered(page) == [*CATEGORIES, "dog"]
        assert page.locator("#wrong-label").input_value() == "cat"  # the choice made before the swap stands
        page.select_option("#wrong-label", "dog")
        tracking.set_production(settings, first)  # back: "dog" is gone, and so is the choice of it
        page.wait_for_function(VERSION_SHOWN, arg=first, timeout=15_000)
        assert labels_offered(page) == list(CATEGORIES)
        assert page.locator("#wrong-label").evaluate("s => s.selectedIndex") == 0
        page.select_option("#wrong-label", label="none of these: name it")
        tracking.set_production(settings, grown_version)  # naming a new one goes on across a swap
        page.wait_for_function(VERSION_SHOWN, arg=grown_version, timeout=15_000)
        assert page.locator("#wrong-label option:checked").inner_text() == "none of these: name it"
        assert page.locator("#new-label").is_visible()
        # Just after a swap, a worker that has not moved yet answers about the version it loaded before: the header
        # does not flip back to it.
        stale = {**page.request.get(f"{url}/api/model").json(), "version": first, "loaded_since": "2026-01-01T00:00:00+00:00"}
        page.evaluate("""() => { window.changes = 0;
            new MutationObserver(() => window.changes++).observe(document.getElementById("model"), {childList: true}); }""")
        page.route("**/api/model", lambda route: route.fulfill(json=stale))
        page.wait_for_timeout(3_500)  # three polls
        assert page.evaluate("window.changes") == 0 and page.locator("#model-version").inner_text() == grown_version
        page.close()


VERSION_SHOWN = "v => document.getElementById('model-version')?.textContent === v"


def labels_offered(page) -> list[str]:
    return page.locator("#wrong-label option").evaluate_all("options => options.slice(1, -1).map(o => o.value)")
