"""Rules and lexicon propose, the fine-tuned model disposes.

`candidates.py` proposes edits from Grammalecte, the word list, confusion sets and the model's
own answer; here a scorer (the fine-tuned model reading each candidate sentence as the
correction of the input, `scoring.py`) weighs them:

1. every candidate is applied alone and the resulting sentences are scored in one batch against
   the unchanged input: its margin, in nats;
2. overlapping candidates compete (one span, one replacement): the one with the largest margin
   wins, if that margin reaches the one asked of its source (a rule's suggestion may need
   little, a homophone swapped on a hunch much more) and it leads the runner-up by its
   source's lead (an unknown word is so unlikely that any real word beats it by many nats:
   what tells a fix from a guess is whether one replacement stands out among the others);
3. the winners are taken one at a time, the best first, each scored on the sentence with the
   edits taken before it, while one still wins its margin there (two edits may each look good
   alone and fix the same error twice, or contradict each other).

A small judge prefers common words whatever their context ("Quand à moi" over "Quant à moi"):
with `frequency`, each margin between known words is first corrected for how much more common
the new words are than the old ones (the word list's counts), so that it measures how well each
fits where it stands.

The margins are tuned on the validation split (`choose_tuning.py`) and saved as `choose.json`
beside the checkpoint, as the guard's are.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from correcteur.candidates import (
    SOURCES,
    Candidate,
    candidates,
    frequency_shift,
    grammalecte_checker,
    one_per_edit_of,
)
from correcteur.errors import UserError
from correcteur.files import write_json
from correcteur.guard import checkpoint_folder
from correcteur.scoring import HFSentenceScorer, ResponseScorer, Scorer
from correcteur.textdiff import typo_distance
from correcteur.weights import load_gemma, load_recorded_base

CHOOSER_FILE = "choose.json"
SOURCE_NAMES = {"grammar": "grammalecte", "speller": "grammalecte (orthographe)", "lexicon": "lexique",
                "accent": "accents", "homophone": "homophones", "variant": "accords et terminaisons",
                "elision": "élision", "compound": "mots composés", "model": "modèle"}  # as `Corrector.suggest` names them
RECENT = 256  # choices kept for `Corrector.suggest` to explain
MAX_MODEL_TYPOS = 2  # a stretch of the model's answer further from its source is a guess, not a fix
# Before tuning: trust a rule's suggestion, ask more of guesses from the word list and more
# still of a real word swapped for another (homophones, agreement forms).
DEFAULT_MARGINS = {"grammar": 0.0, "speller": 1.0, "lexicon": 1.0, "accent": 2.0, "homophone": 3.0,
                   "variant": 3.0, "elision": 1.0, "compound": 2.0, "model": 1.0}


@dataclass
class ChooserConfig:
    # nats each source's candidate must win by over the text without it; a source missing or
    # set to None proposes nothing
    margins: dict[str, float | None] = field(default_factory=lambda: dict(DEFAULT_MARGINS))
    joint: bool = True  # the winners taken one at a time, each scored beside those taken before
    # nats a cluster's winner must beat every other candidate proposed for its span by, per
    # source of the winner (missing or None: it need only be the best of those reaching their margins)
    leads: dict[str, float | None] = field(default_factory=dict)
    scorer: str = "finetuned"  # who judges: one of `SCORERS`
    # nats taken off the judge's preference for each nat by which an edit's words are more common
    # than those they replace (`frequency_shift`; known words only): a small judge prefers a
    # common word whatever its context (quand over quant), and this asks it how well each fits
    frequency: float = 0.0

    def sources(self) -> tuple[str, ...]:
        return tuple(s for s in SOURCES if self.margins.get(s) is not None)


@dataclass(frozen=True)
class Choice:
    """A kept candidate and the margin it won by (in the company of the other choices when
    they were rescored together; corrected for word frequency as the config asks)."""

    candidate: Candidate
    margin: float


def apply_candidates(text: str, chosen: list[Candidate]) -> str:
    """`text` with non-overlapping candidates applied (right to left, so offsets hold)."""
    for c in sorted(chosen, key=lambda c: (c.start, c.end), reverse=True):
        text = c.apply(text)
    return text


def clusters(found: list[Candidate]) -> list[list[int]]:
    """Indices of candidates grouped by overlapping spans, in text order (spans that only touch,
    or an insertion where a span starts or ends, can be applied together)."""
    groups: list[list[int]] = []
    end = -1
    for i in sorted(range(len(found)), key=lambda i: (found[i].start, found[i].end)):
        c = found[i]
        if groups and c.start < end:
            groups[-1].append(i)
            end = max(end, c.end)
        else:
            groups.append([i])
            end = c.end
    return groups


class Weighing:
    """One text, its candidates, and the scorer's score of every sentence asked of it (each
    scored once: tuning replays hundreds of settings on the same weighings)."""

    def __init__(self, scorer: Scorer, text: str, found: list[Candidate], scores: dict[str, float] | None = None):
        self.scorer, self.text, self.found = scorer, text, found
        self._scores: dict[str, float] = {} if scores is None else scores  # shared with a wider weighing
        self.score(self.sentences)
        self.margins = [self._scores[t] - self._scores[text] for t in self.sentences]
        self.groups = clusters(found)

    @functools.cached_property
    def sentences(self) -> list[str]:
        """The text with each candidate applied alone."""
        return [c.apply(self.text) for c in self.found]

    @functools.cached_property
    def shifts(self) -> list[float]:
        """Each candidate's `frequency_shift`."""
        return [frequency_shift(c, self.text) for c in self.found]

    def narrowed(self, sources: tuple[str, ...]) -> Weighing:
        """This weighing with only the candidates of `sources`, as `Chooser.weigh` would have
        proposed them (an edit two sources propose named by the first), reusing every score (a
        candidate's margin does not depend on the others)."""
        found = one_per_edit_of([c for c in self.found if c.source in sources])
        return self if found == self.found else Weighing(self.scorer, self.text, found, self._scores)

    def score(self, texts: list[str]) -> None:
        todo = [t for t in dict.fromkeys([self.text, *texts]) if t not in self._scores]
        if todo:
            self._scores.update(zip(todo, self.scorer(self.text, todo), strict=True))

    def gain(self, better: str, worse: str) -> float:
        self.score([better, worse])
        return self._scores[better] - self._scores[worse]


def choose(weighing: Weighing, config: ChooserConfig) -> list[Choice]:
    """The edits `config` keeps of a weighing (narrowed to its sources): the best candidate of
    each cluster that wins its source's margin (and leads by its source's lead the best other
    sentence proposed for the cluster); then (with `joint`) they are taken one at a time, the
    one that gains most over its margin first, each scored on the text with the edits taken
    before it, until none gains its margin any more. Two edits that fix one error twice ("à
    quitté" → "a quitté" and "à quitter") so keep the better one, where judging each alone
    would keep both."""
    weighing = weighing.narrowed(config.sources())
    margins = config.margins
    shifts = weighing.shifts if config.frequency else [0.0] * len(weighing.found)
    fits = [m - config.frequency * shift for m, shift in zip(weighing.margins, shifts, strict=True)]
    shift_of = dict(zip(weighing.found, shifts, strict=True))
    winners = []
    for group in weighing.groups:
        able = [i for i in group if fits[i] >= margins[weighing.found[i].source]]
        if not able:
            continue
        best = max(able, key=lambda i: fits[i])
        runner_up = max((fits[i] for i in group if weighing.sentences[i] != weighing.sentences[best]),
                        default=None)  # "Praris" → "Paris" and "Praris." → "Paris." are one sentence
        lead = config.leads.get(weighing.found[best].source)
        if lead is None or runner_up is None or fits[best] - runner_up >= lead:
            winners.append(Choice(weighing.found[best], fits[best]))
    if not config.joint or len(winners) < 2:
        return winners
    taken: list[Choice] = []
    pool = [w.candidate for w in winners]
    current = weighing.text
    while pool:
        trials = [apply_candidates(weighing.text, [t.candidate for t in taken] + [c]) for c in pool]
        weighing.score([current, *trials])  # one batch a round
        gains = [weighing.gain(trial, current) - config.frequency * shift_of[c] for trial, c in zip(trials, pool, strict=True)]
        best = max(range(len(pool)), key=lambda i: gains[i] - margins[pool[i].source])
        if gains[best] < margins[pool[best].source]:
            break
        taken.append(Choice(pool.pop(best), gains[best]))
        current = trials[best]
    return sorted(taken, key=lambda t: (t.candidate.start, t.candidate.end))


def chosen_text(weighing: Weighing, config: ChooserConfig) -> str:
    """The text with the edits `config` keeps applied: the chooser's answer, replayed."""
    return apply_candidates(weighing.text, [c.candidate for c in choose(weighing, config)])


class Chooser:
    """`chooser(source, answer) -> text`: the candidates of `source` (with the model's `answer`
    among them, when given) weighed by `scorer`, the winners applied. Shaped like the guard,
    so the corrector calls either the same way."""

    def __init__(self, scorer: Scorer, config: ChooserConfig | None = None):
        self.scorer = scorer
        self.config = config or ChooserConfig()
        self.grammalecte = grammalecte_checker() is not None
        self.recent: dict[str, list[Choice]] = {}

    def __call__(self, source: str, answer: str | None = None, protected: list[tuple[int, int]] = ()) -> str:
        return apply_candidates(source, [c.candidate for c in self.choices(source, answer, protected)])

    @property
    def uses_model(self) -> bool:
        """Whether the model's own answer is among the candidates (then it must be generated)."""
        return "model" in self.config.sources()

    def weigh(self, source: str, answer: str | None = None, protected: list[tuple[int, int]] = ()) -> Weighing:
        """The candidates of `source` that leave the `protected` spans alone, scored."""
        found = [c for c in proposals(source, answer if self.uses_model else None, self.config.sources())
                 if not any(c.start < end and c.end > start for start, end in protected)]
        return Weighing(self.scorer, source, found)

    def choices(self, source: str, answer: str | None = None, protected: list[tuple[int, int]] = ()) -> list[Choice]:
        """The kept candidates; the last few texts' are remembered (`recent`), so that the
        corrector can say who proposed each edit it made."""
        chosen = choose(self.weigh(source, answer, protected), self.config) if source.strip() else []
        if len(self.recent) >= RECENT:
            self.recent.clear()
        self.recent[source] = chosen
        return chosen

    @property
    def description(self) -> str:
        rules = "Grammalecte" if self.grammalecte else "sans Grammalecte (non installé)"
        return f"candidats : {', '.join(self.config.sources())} ; {rules} ; juge : {self.scorer.name}"


def proposals(source: str, answer: str | None, sources: tuple[str, ...], one_per_edit: bool = True) -> list[Candidate]:
    """The candidates the chooser weighs: `candidates`, less the model's far stretches."""
    return [c for c in candidates(source, answer, sources, one_per_edit)
            if c.source != "model" or typo_distance(source[c.start:c.end], c.replacement) <= MAX_MODEL_TYPOS]


def save_chooser_config(config: ChooserConfig, folder: str | Path, tuning: dict | None = None) -> Path:
    return write_json(Path(folder) / CHOOSER_FILE, {"config": dataclasses.asdict(config), "tuning": tuning or {}})


def load_chooser_config(checkpoint: str | Path) -> ChooserConfig | None:
    """The margins tuned for a checkpoint (`choose.json` beside it), or None when untuned."""
    path = checkpoint_folder(checkpoint) / CHOOSER_FILE
    if not path.is_file():
        return None
    return ChooserConfig(**json.loads(path.read_text(encoding="utf-8"))["config"])


SCORERS = ("finetuned", "base", "gemma", "gemma-proofread")
# What `gemma-proofread` reads before every sentence (ours): "a text proofread and corrected by a
# professional proofreader, without a single mistake"
PROOFREAD = "Texte relu et corrigé par un correcteur professionnel, sans aucune faute :\n"


def make_scorer(name: str, model: torch.nn.Module, tokenizer, meta: dict) -> Scorer:
    """The judge a chooser uses: the fine-tuned checkpoint reading each candidate as the
    correction of its input (`finetuned`), the same model before fine-tuning with the same
    prompt (`base`), or gemma-3-270m reading bare sentences (`gemma`) or each after the words
    "a text proofread without a mistake" (`gemma-proofread`)."""
    style, prefix = meta.get("prompt_style", "alpaca"), meta.get("input_prefix", "")
    if name == "finetuned":
        return ResponseScorer(model, tokenizer, style, prefix, name="finetuned")
    if name == "base":
        base, base_tokenizer, _ = load_recorded_base(meta)
        return ResponseScorer(base.to(next(model.parameters()).device).eval(), base_tokenizer, style, prefix,
                              name=f"{meta['model_name']} (base)")
    if name in ("gemma", "gemma-proofread"):
        gemma, gemma_tokenizer, _ = load_gemma()
        if name == "gemma":
            return HFSentenceScorer(gemma, gemma_tokenizer, name="gemma-3-270m")
        return HFSentenceScorer(gemma, gemma_tokenizer, name="gemma-3-270m, proofread", preamble=PROOFREAD)
    raise UserError(f"unknown scorer {name!r}: choose one of {', '.join(SCORERS)}")
