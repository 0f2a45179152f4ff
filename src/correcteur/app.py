"""The Tkinter corrector window: type or paste text, press Corriger, see what changed.

The model runs in a worker thread so the window keeps answering; Tk is not thread-safe, so
the worker only puts its result on a queue and the Tk thread polls that queue with `after`.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import tkinter as tk
from collections.abc import Callable
from tkinter import font as tkfont
from tkinter import ttk

from correcteur.errors import UserError
from correcteur.textdiff import diff_words

POLL_MS = 50
COLORS = {"delete": "#b3261e", "delete_bg": "#fbe5e3", "insert": "#146c2e", "insert_bg": "#dcf3e2",
          "accent": "#2f62c8", "accent_active": "#244fa3"}


def readable_error(error: BaseException) -> str:
    """A user error is already a sentence; anything else gets its type, never a traceback."""
    if isinstance(error, UserError):
        return str(error)
    return f"La correction a échoué ({type(error).__name__}: {error})"


class CorrectorApp:
    """The window. `corrector` is anything with `.correct(text, on_progress=None)` and
    `.description`; it may be None until `load` hands one over. `on_progress(done, total)`,
    called from the worker, shows how many sentences of a long text are done."""

    def __init__(self, root: tk.Tk, corrector=None):
        self.root = root
        self.corrector = corrector
        self.corrected = ""
        self.results: queue.Queue = queue.Queue()
        self.worker: threading.Thread | None = None
        root.title("Correcteur")
        root.geometry("760x560")
        root.minsize(480, 360)
        root.report_callback_exception = self._report_callback_exception
        self._build(root)
        self._set_idle(self.corrector.description if corrector else "Aucun modèle chargé.")

    def _build(self, root: tk.Tk) -> None:
        style = ttk.Style(root)
        if "clam" in style.theme_names():
            style.theme_use("clam")
        style.configure("Primary.TButton", foreground="white", background=COLORS["accent"])
        style.map("Primary.TButton", background=[("disabled", "#9db3de"), ("active", COLORS["accent_active"])],
                  foreground=[("disabled", "#eef2fa")])
        text_font = tkfont.nametofont("TkTextFont").copy()
        text_font.configure(size=12)
        title_font = tkfont.nametofont("TkDefaultFont").copy()
        title_font.configure(weight="bold")

        frame = ttk.Frame(root, padding=12)
        frame.pack(fill="both", expand=True)
        frame.columnconfigure(0, weight=1)
        frame.rowconfigure(1, weight=1)
        frame.rowconfigure(4, weight=1)

        ttk.Label(frame, text="Texte à corriger", font=title_font).grid(row=0, column=0, sticky="w")
        self.input = self._text_box(frame, text_font, row=1)

        buttons = ttk.Frame(frame)
        buttons.grid(row=2, column=0, sticky="ew", pady=8)
        self.correct_button = ttk.Button(buttons, text="Corriger", style="Primary.TButton",
                                         command=self.start_correction)
        self.correct_button.pack(side="left")
        ttk.Label(buttons, text="Ctrl+Entrée", foreground="#666666").pack(side="left", padx=8)
        self.copy_button = ttk.Button(buttons, text="Copier", command=self.copy_result, state="disabled")
        self.copy_button.pack(side="right")

        ttk.Label(frame, text="Texte corrigé", font=title_font).grid(row=3, column=0, sticky="w")
        self.output = self._text_box(frame, text_font, row=4)
        self.output.configure(state="disabled", background="#f7f7f5")
        self.output.tag_configure("delete", foreground=COLORS["delete"], background=COLORS["delete_bg"],
                                  overstrike=True)
        self.output.tag_configure("insert", foreground=COLORS["insert"], background=COLORS["insert_bg"])
        self.output.tag_configure("error", foreground=COLORS["delete"])

        self.status = tk.StringVar()
        ttk.Label(frame, textvariable=self.status, foreground="#444444").grid(
            row=5, column=0, sticky="ew", pady=(8, 0))

        for widget in (self.input, root):  # on the Text first, so "break" stops the newline
            widget.bind("<Control-Return>", self._on_shortcut)
            widget.bind("<Control-KP_Enter>", self._on_shortcut)
        self.input.focus_set()

    @staticmethod
    def _text_box(parent: ttk.Frame, text_font: tkfont.Font, row: int) -> tk.Text:
        box = ttk.Frame(parent)
        box.grid(row=row, column=0, sticky="nsew")
        box.columnconfigure(0, weight=1)
        box.rowconfigure(0, weight=1)
        text = tk.Text(box, wrap="word", undo=True, height=8, font=text_font, padx=8, pady=6,
                       relief="solid", borderwidth=1, highlightthickness=0)
        scroll = ttk.Scrollbar(box, orient="vertical", command=text.yview)
        text.configure(yscrollcommand=scroll.set)
        text.grid(row=0, column=0, sticky="nsew")
        scroll.grid(row=0, column=1, sticky="ns")
        return text

    @property
    def busy(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def _on_shortcut(self, _event: tk.Event) -> str:
        self.start_correction()
        return "break"

    def load(self, factory: Callable[[], object]) -> None:
        """Build the corrector in the background (loading a model takes seconds)."""
        self._run_in_background(factory, self._on_loaded, "Chargement du modèle…")

    def _on_loaded(self, corrector) -> None:
        self.corrector = corrector
        self._set_idle(corrector.description)

    def start_correction(self) -> None:
        """Correct the input text, unless a run is already going (a second click is ignored)."""
        if self.busy:
            return
        if self.corrector is None:
            self._show_error("Aucun modèle n'est chargé : relancez avec --checkpoint CHEMIN.")
            return
        text = self.input.get("1.0", "end-1c")
        if not text.strip():
            self.status.set("Rien à corriger : tapez ou collez un texte.")
            return
        start = time.perf_counter()

        def report(done: int, total: int) -> None:  # in the worker: through the queue, like results
            self.results.put((self._show_progress, (done, total)))

        def job() -> tuple[str, str, float]:
            return text, self.corrector.correct(text, on_progress=report), time.perf_counter() - start

        self._run_in_background(job, self._show_result, "Correction en cours…")

    def _run_in_background(self, job: Callable[[], object], on_done: Callable[[object], None],
                           message: str) -> None:
        def work() -> None:
            try:
                self.results.put((on_done, job()))
            except Exception as error:  # the window reports every failure
                self.results.put((self._show_error, readable_error(error)))

        self.correct_button.configure(state="disabled")
        self.status.set(message)
        self.worker = threading.Thread(target=work, daemon=True)
        self.worker.start()
        self.root.after(POLL_MS, self._poll)

    def _poll(self) -> None:
        """Hand the worker's messages to the Tk thread: progress, then one result or error."""
        while True:
            try:
                handler, value = self.results.get_nowait()
            except queue.Empty:
                self.root.after(POLL_MS, self._poll)
                return
            handler(value)
            if handler != self._show_progress:
                return

    def _show_progress(self, progress: tuple[int, int]) -> None:
        done, total = progress
        if total > 1:
            self.status.set(f"Correction en cours… {done}/{total} phrases")

    def _show_result(self, result: tuple[str, str, float]) -> None:
        source, corrected, seconds = result
        self.corrected = corrected
        runs = diff_words(source, corrected)
        self._write_output([(text, () if tag == "equal" else (tag,)) for tag, text in runs])
        tags = ["equal", *(tag for tag, _ in runs)]
        changes = sum(a == "equal" and b != "equal" for a, b in itertools.pairwise(tags))
        summary = f"{changes} modification{'s' if changes > 1 else ''}" if changes else "aucune modification"
        self.copy_button.configure(state="normal")
        self._set_idle(f"Corrigé en {seconds:.1f} s · {summary} · {self.corrector.description}")

    def _show_error(self, message: str) -> None:
        self.corrected = ""
        self._write_output([(message, ("error",))])
        self.copy_button.configure(state="disabled")
        self._set_idle("Erreur : voir le message ci-dessus.")

    def _write_output(self, runs: list[tuple[str, tuple[str, ...]]]) -> None:
        self.output.configure(state="normal")
        self.output.delete("1.0", "end")
        for text, tags in runs:
            self.output.insert("end", text, tags)
        self.output.configure(state="disabled")

    def _set_idle(self, message: str) -> None:
        self.correct_button.configure(state="normal" if self.corrector else "disabled")
        self.status.set(message)

    def copy_result(self) -> None:
        """Copy the corrected text only (without the struck-out words) to the clipboard."""
        self.root.clipboard_clear()
        self.root.clipboard_append(self.corrected)
        self.status.set("Texte corrigé copié dans le presse-papiers.")

    def _report_callback_exception(self, exc_type, error, _traceback) -> None:
        self._show_error(readable_error(error))


def open_window() -> tk.Tk:
    """The Tk root, or a UserError that says what to do on a machine without a display."""
    try:
        return tk.Tk()
    except tk.TclError as error:
        raise UserError(
            f"the corrector window needs a graphical display ({error}). On a machine without "
            'one, use the command line: python -m correcteur correct --checkpoint PATH "texte"'
        ) from None


def launch(corrector=None, load=None) -> None:
    """Open the window and run it until it is closed: on `corrector`, or on the one that
    `load()` returns (called in the background, so the window shows while a model loads)."""
    app = CorrectorApp(open_window(), corrector)
    if load is not None:
        app.load(load)
    app.root.mainloop()
