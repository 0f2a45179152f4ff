"""The corrector window, driven for real in an Xvfb X server with stand-in correctors."""

from __future__ import annotations

import gc
import itertools
import os
import re
import shutil
import subprocess
import threading
import time
import tkinter as tk
from pathlib import Path

import pytest

from correcteur.app import CorrectorApp, launch
from correcteur.cli import main
from correcteur.errors import UserError

pytestmark = pytest.mark.x11
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def display():
    """A private Xvfb server; -displayfd lets it pick a free display number itself."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (Debian package xvfb; .ci/run installs it)")
    read_end, write_end = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        number = pipe.readline().strip()
    assert number, "Xvfb did not start"
    previous = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    yield f":{number}"
    if previous is None:
        del os.environ["DISPLAY"]
    else:
        os.environ["DISPLAY"] = previous
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(autouse=True)
def collect_tk_objects_here():
    """Tk objects must be freed in the thread that made them: a window's reference cycles
    collected later by a garbage collection that happens to run in another thread (a test
    server's, tqdm's) abort the interpreter (Tcl_AsyncDelete). Collect them now, in this one."""
    yield
    gc.collect()


@pytest.fixture
def root(display):
    window = tk.Tk()
    yield window
    window.destroy()


class FakeCorrector:
    """`.correct` and `.description`, as the window needs: fixes known words, optionally slowly."""

    description = "faux modèle · 0.0 M paramètres · cpu"

    def __init__(self, fixes: dict[str, str], delay: float = 0.0, error: Exception | None = None):
        self.fixes, self.delay, self.error = fixes, delay, error
        self.calls = 0
        self.threads: list[str] = []

    def correct(self, text: str, on_progress=None) -> str:
        """`delay` seconds per sentence, each one announced to `on_progress` as `Corrector` does."""
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        sentences = text.count(". ") + 1
        for done in range(1, sentences + 1):
            time.sleep(self.delay)
            if on_progress is not None:
                on_progress(done, sentences)
        if self.error is not None:
            raise self.error
        for wrong, right in self.fixes.items():
            text = text.replace(wrong, right)
        return text


FIXES = {"enfant ": "enfants ", "aller a": "allés à"}


def pump(root: tk.Tk, until, timeout: float = 5.0) -> None:
    """Run the Tk event loop until `until()` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the window did not get there in time"
        root.update()
        time.sleep(0.005)


def output_text(app: CorrectorApp) -> str:
    return app.output.get("1.0", "end-1c")


def tagged(app: CorrectorApp, tag: str) -> list[str]:
    ranges = app.output.tag_ranges(tag)
    return [app.output.get(a, b) for a, b in zip(ranges[::2], ranges[1::2], strict=True)]


def type_with_xdotool(root: tk.Tk, widget: tk.Widget, text: str) -> None:
    """Real key presses through the X server, while Tk keeps reading its events.

    ASCII only: xdotool types other characters by remapping a key for a moment, and Tk
    sometimes reads the key after the mapping is gone."""
    root.update()
    typing = subprocess.Popen(["xdotool", "windowfocus", "--sync", str(int(root.wm_frame(), 16)),
                               "type", "--delay", "15", text])
    widget.focus_force()
    pump(root, lambda: typing.poll() is not None, timeout=10)
    pump(root, lambda: widget.get("1.0", "end-1c") == text, timeout=2)


def test_type_correct_highlight_copy_and_screenshot(root):
    corrector = FakeCorrector(FIXES)
    app = CorrectorApp(root, corrector)
    sentence = "Les enfant sont aller a la plage ce matin."
    if shutil.which("xdotool"):
        type_with_xdotool(root, app.input, sentence)
    else:
        app.input.insert("1.0", sentence)
    app.input.focus_force()
    root.update()
    app.input.event_generate("<Control-Return>")  # the shortcut, not a newline
    pump(root, lambda: app.corrected)

    assert app.input.get("1.0", "end-1c") == sentence
    assert app.corrected == "Les enfants sont allés à la plage ce matin."
    assert output_text(app) == "Les enfantenfants sont allerallés aà la plage ce matin."
    assert tagged(app, "delete") == ["enfant", "aller", "a"]
    assert tagged(app, "insert") == ["enfants", "allés", "à"]
    assert corrector.threads != ["MainThread"]
    assert re.fullmatch(rf"Corrigé en \d+\.\d s · 3 modifications · {corrector.description}", app.status.get())

    if shutil.which("import"):
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "app.png"
        root.update()
        subprocess.run(["import", "-window", root.wm_frame(), str(shot)], check=True, timeout=20)
        assert shot.stat().st_size > 1000

    app.copy_button.invoke()
    assert root.clipboard_get() == "Les enfants sont allés à la plage ce matin."


def test_window_answers_while_a_slow_model_runs(root):
    corrector = FakeCorrector(FIXES, delay=1.0)
    app = CorrectorApp(root, corrector)
    app.input.insert("1.0", "Les enfant jouent.")
    ticks = []
    pending = []

    def tick() -> None:
        ticks.append(time.monotonic())
        pending[:] = [root.after(20, tick)]

    tick()
    app.correct_button.invoke()
    assert str(app.correct_button.cget("state")) == "disabled"
    root.update()
    app.correct_button.invoke()  # a second click while running
    app.start_correction()  # and the shortcut's path, which a disabled button does not stop
    pump(root, lambda: app.corrected)
    root.after_cancel(pending[0])

    assert corrector.calls == 1
    assert output_text(app) == "Les enfantenfants jouent."
    assert len(ticks) >= 20  # the event loop kept running through the 1 s correction
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.5
    assert str(app.correct_button.cget("state")) == "normal"


def test_a_long_text_shows_its_progress_sentence_by_sentence(root):
    app = CorrectorApp(root, FakeCorrector(FIXES, delay=0.3))
    app.input.insert("1.0", "Les enfant jouent. Il fait beau. On va aller a la plage.")
    seen = []
    app.correct_button.invoke()
    pump(root, lambda: seen.append(app.status.get()) or app.corrected)
    progress = [s for s in dict.fromkeys(seen) if "phrases" in s]
    assert progress == [f"Correction en cours… {n}/3 phrases" for n in (1, 2, 3)][:len(progress)]
    assert len(progress) >= 2
    assert app.corrected == "Les enfants jouent. Il fait beau. On va allés à la plage."
    assert app.status.get().startswith("Corrigé en")


@pytest.mark.parametrize("error, message", [
    (UserError("a sentence of 900 tokens is too long for gpt2"), "a sentence of 900 tokens is too long for gpt2"),
    (RuntimeError("CUDA out of memory"), "La correction a échoué (RuntimeError: CUDA out of memory)"),
])
def test_model_failure_is_shown_in_the_window(root, error, message):
    app = CorrectorApp(root, FakeCorrector({}, error=error))
    app.input.insert("1.0", "Bonjour.")
    app.correct_button.invoke()
    pump(root, lambda: output_text(app))
    assert output_text(app) == message
    assert tagged(app, "error") == [message]
    assert str(app.copy_button.cget("state")) == "disabled"


def test_a_failing_callback_is_reported_in_the_window(root, capsys):
    app = CorrectorApp(root, FakeCorrector(FIXES))
    app.copy_button.configure(state="normal", command=lambda: {}["clé"])
    app.copy_button.invoke()
    assert output_text(app) == "La correction a échoué (KeyError: 'clé')"
    assert "Traceback" not in capsys.readouterr().err


def test_loading_failure_is_shown_and_disables_correcting(root):
    app = CorrectorApp(root)

    def load():
        raise UserError("no checkpoint at runs/x: train one with `python -m correcteur train`")

    app.load(load)
    assert app.status.get() == "Chargement du modèle…"
    pump(root, lambda: output_text(app))
    assert output_text(app).startswith("no checkpoint at runs/x")
    assert str(app.correct_button.cget("state")) == "disabled"


def test_loading_hands_the_corrector_to_the_window(root):
    corrector = FakeCorrector(FIXES)
    app = CorrectorApp(root)
    app.load(lambda: corrector)
    pump(root, lambda: app.corrector is corrector)
    assert app.status.get() == corrector.description
    assert str(app.correct_button.cget("state")) == "normal"


def test_app_without_display_points_to_the_command_line(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    assert main(["app", "--checkpoint", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert "needs a graphical display" in err and "python -m correcteur correct" in err


def test_launch_opens_the_window_on_a_loaded_corrector(display, monkeypatch):
    """`launch` (used by notebook 05 and `correcteur app`) shows the corrector a loader returns."""
    seen = {}

    def fake_mainloop(root):
        app = seen["app"]
        pump(root, lambda: app.corrector is not None)
        seen["status"] = app.status.get()
        root.destroy()

    original_init = CorrectorApp.__init__

    def remember(self, root, corrector=None):
        original_init(self, root, corrector)
        seen["app"] = self

    monkeypatch.setattr(CorrectorApp, "__init__", remember)
    monkeypatch.setattr(tk.Tk, "mainloop", fake_mainloop)
    launch(load=lambda: FakeCorrector({}))
    assert seen["status"] == FakeCorrector.description
