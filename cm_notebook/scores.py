"""Scores of assistant messages: thumbs, a 1-5 score, tags, a note and metric values.

A :class:`Score` belongs to one assistant message and is stored beside it, in
``<context>/scores/<message id>.json`` (see :mod:`cm_notebook.store.scores`), never
inside the message file: finished messages stay immutable, so readers may cache them.

Rating again merges into what is stored (:func:`merged`):

* ``thumbs``, ``score``, ``note`` and ``by`` replace the stored value when given (not
  None) and keep it otherwise;
* ``tags`` are added to the stored ones (each kept once, in first-seen order);
* ``metrics`` (values from scoring functions, :meth:`ContextSession.score
  <cm_notebook.session.ContextSession.score>`) replace the stored value of the same
  name and keep the others; a scoring function that failed on the message records its
  error under its name in ``errors`` (dropping its old value), and a later success
  of that function (not another one's metric of the same name) clears the error.
  Which function gave each metric is kept (``metric_sources``), so a function returning
  a mapping replaces all the metrics it gave before: when it fails, none of them is
  left looking current, and a metric it no longer gives is dropped;
* a scoring function's rating (the keys ``thumbs``, ``score``, ``tags``, ``note`` of
  its mapping) is its own, as its metrics are: ``rating_sources`` names the function
  that set ``thumbs``, ``score`` or ``note``, ``tag_sources`` the one that added each
  tag, and when that function fails on the message, or runs again without them, they
  are dropped. A person's rating wins: a field a person rated (by
  :meth:`~cm_notebook.session.ContextSession.rate`, before or after) is never replaced
  or dropped by a function, a tag a person gives is theirs, and a field a person rates
  after a function is theirs from then on. To keep a function's verdict beside a
  person's, return it as a metric (e.g. ``judge_score``). ``by`` names the person who
  rated; when no person did, the function that rated last (``rating_sources["by"]``),
  so a function's rating is never credited to a person, nor a person's to a function;
* ``clear=True`` takes the rating back first (thumbs, score, tags, note and by, a
  person's or a function's) and keeps what scoring functions gave as metrics (with
  their errors and sources), which may have cost a judge model's calls;
  ``clear_metrics=True`` drops those (the two together start from an empty score).

Tags and metric names are kept in Unicode normal form C (NFC): ``"café"`` typed with a
combining accent (as macOS file names and some keyboards give it) and with the composed
``é`` look the same and are one tag, one metric, one column. They are normalized where
they come in and where a score is read, so a score stored before in another form still
reads and merges (of two values stored for one metric under its two spellings, the one
written later in the file is kept). NFC only: compatibility characters (``²``, ``ﬁ``)
stay as typed.

Scoring functions (:func:`interpret`) return a number or a bool (stored as the metric
named after the function), or a mapping: its keys ``thumbs``, ``score``, ``tags`` and
``note`` rate the message as :meth:`~cm_notebook.session.ContextSession.rate` does
(under the rules above: a person's rating wins), and every other key is a metric of
that name (a number or a bool).

A score stored before ``rating_sources`` and ``tag_sources`` were kept reads with both
empty: its whole rating counts as a person's.

Older versions read a score only if it holds no field they do not know (and the file
says nothing of the version that wrote it): one they cannot read they skip, and their
next rating replaces it, with the person's rating and every metric in it. So a score
as JSON (its file, an export, a signal) leaves out ``metric_sources``,
``rating_sources`` and ``tag_sources``, the fields added since the first scores, while
they are empty; missing, they read as empty. A score only people rated reads in every
version; ``metric_sources`` is written once a scoring function gave a metric (the
versions since it was added read it), ``rating_sources`` and ``tag_sources`` only while
a function's rating is kept (no older version reads those).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from ._rating_sources import SOURCED_FIELDS, rate_into
from ._unicode import refuse_control_characters, scrub
from .errors import InvalidInputError
from .model import UTCDateTime, utcnow

__all__ = ["Score", "interpret", "merged", "metric_name", "stored_score"]

Thumbs = Literal["up", "down"]
MetricValue = float | int | bool

_MAX_TAGS = 50
_MAX_TAG = 100
_MAX_NOTE = 10_000
_MAX_METRICS = 100
_MAX_NAME = 100

# The fields a score gained after the first version that stored scores, in the order
# they came; written as JSON only when not empty (see the module docstring).
_ADDED_FIELDS = ("metric_sources", "rating_sources", "tag_sources")


class Score(BaseModel):
    """What was said about one assistant message (see the module docstring).

    ``branch`` is the branch the message was on when last rated (None: on no branch);
    ``by`` who rated it (free text, e.g. a user name); ``metrics`` the values of named
    scoring functions, ``errors`` the errors of those that failed on this message, and
    ``metric_sources`` the scoring function that gave each metric (by the name it was
    run under), for those a function gave; ``rating_sources`` the function that set
    ``thumbs``, ``score``, ``note`` or ``by``, and ``tag_sources`` the one that added
    each tag, for those a function set (the rest is a person's).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    message_id: str
    branch: str | None = None
    thumbs: Thumbs | None = None
    score: int | None = Field(None, ge=1, le=5)
    tags: list[str] = Field(default_factory=list)
    note: str | None = Field(None, max_length=_MAX_NOTE)
    by: str | None = Field(None, max_length=200)
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    errors: dict[str, str] = Field(default_factory=dict)
    metric_sources: dict[str, str] = Field(default_factory=dict)
    rating_sources: dict[str, str] = Field(default_factory=dict)
    tag_sources: dict[str, str] = Field(default_factory=dict)
    created_at: UTCDateTime = Field(default_factory=utcnow)
    updated_at: UTCDateTime = Field(default_factory=utcnow)

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: object) -> object:
        # A name decoded from a file name (os.fsdecode) may hold a lone surrogate, which
        # no UTF-8 file can: it becomes U+FFFD here, as the store writes it, so the
        # score in memory is the one on disk and writing it cannot fail half-way.
        # Tags and metric names are NFC (see the module docstring), also in a score
        # stored before in another form.
        return _names_in_nfc(scrub(data)) if isinstance(data, dict) else data

    @field_validator("score", mode="before")
    @classmethod
    def _integer_score(cls, value: object) -> object:
        # A score is a whole number 1-5. numpy's numbers (a rating read from a DataFrame)
        # are Python's here, and a float without a fraction (4.0, as a column with a
        # missing value holds 4) is that int; a bool (pydantic would take True as 1), a
        # fraction, NaN or an infinity is refused.
        value = _plain(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"score must be a whole number from 1 to 5, got {value!r}")
        return value

    @field_validator("rating_sources")
    @classmethod
    def _rated_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - SOURCED_FIELDS)
        if unknown:
            raise ValueError(f"rating_sources names {unknown}, not {sorted(SOURCED_FIELDS)}")
        return value

    @field_validator("tags")
    @classmethod
    def _clean_tags(cls, value: list[str]) -> list[str]:
        tags = list(dict.fromkeys(tag.strip() for tag in value))
        if any(not tag or len(tag) > _MAX_TAG for tag in tags):
            raise ValueError(f"tags must be non-empty strings of at most {_MAX_TAG} characters")
        if len(tags) > _MAX_TAGS:
            raise ValueError(f"at most {_MAX_TAGS} tags per message, got {len(tags)}")
        return tags

    @field_validator("metrics")
    @classmethod
    def _finite(cls, value: dict[str, MetricValue]) -> dict[str, MetricValue]:
        if len(value) > _MAX_METRICS:
            raise ValueError(f"at most {_MAX_METRICS} metrics per message, got {len(value)}")
        for name, number in value.items():
            _name_fits(name)  # controls are refused as names are given: old scores read
            if not _finite_float(number):
                # Readers (comparisons, records) compute with metrics as floats, and
                # the JSON writer cannot even print an int of thousands of digits; the
                # value is not shown, since str() of such an int may itself fail.
                raise ValueError(
                    f"metric {name!r} is not a finite number (NaN, an infinity, or an "
                    "integer beyond the float range, about 1.8e308); return a finite number"
                )
        return value

    @model_serializer(mode="wrap")
    def _as_older_versions_read(  # type: ignore[no-untyped-def]
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ):
        # JSON is what other processes and files hold, which an older version may read
        # (see the module docstring): an empty field it does not know would make it
        # refuse the whole score. Python's dump keeps every field, for code that
        # reads them. No return annotation: pydantic would describe a score's JSON by
        # it (in the server's OpenAPI document) instead of by the fields.
        data: dict[str, Any] = handler(self)
        if info.mode_is_json():
            for name in _ADDED_FIELDS:
                if name in data and not data[name]:
                    del data[name]
        return data

    def __repr__(self) -> str:
        parts = [f"{key}={value!r}" for key, value in self._shown().items()]
        return f"<Score {self.message_id} {' '.join(parts) or '(empty)'}>"

    def _shown(self) -> dict[str, Any]:
        fields = ("thumbs", "score", "tags", "note", "metrics", "errors")
        return {key: getattr(self, key) for key in fields if getattr(self, key)}


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _names_in_nfc(data: dict[str, Any]) -> dict[str, Any]:
    # ``data`` (a score as stored or given) with its tags and metric names (metrics,
    # errors and metric_sources keys, and the functions named in metric_sources) NFC;
    # anything of the wrong shape is left for the fields' validation to name.
    data = dict(data)
    tags = data.get("tags")
    if isinstance(tags, list):
        data["tags"] = [_nfc(tag) if isinstance(tag, str) else tag for tag in tags]
    for field in ("metrics", "errors", "metric_sources", "tag_sources"):
        found = data.get(field)
        if isinstance(found, dict):
            data[field] = {_nfc(k) if isinstance(k, str) else k: v for k, v in found.items()}
    for field in ("metric_sources", "rating_sources", "tag_sources"):
        sources = data.get(field)
        if isinstance(sources, dict):
            data[field] = {k: _nfc(v) if isinstance(v, str) else v for k, v in sources.items()}
    return data


def _finite_float(number: MetricValue) -> bool:
    try:
        return math.isfinite(number)  # an int too large for a float raises here
    except OverflowError:
        return False


def _name_fits(name: object) -> str:
    # A short non-empty string: what a stored score's metric names are held to.
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise InvalidInputError(
            f"a metric name must be a non-empty string of at most {_MAX_NAME} characters, "
            f"got {name!r:.120}"
        )
    return name.strip()


def metric_name(name: object) -> str:
    """``name`` in Unicode normal form C if it can name a metric (a short non-empty
    string of one line, without control characters); else an InvalidInputError saying
    what to change."""
    name = _name_fits(_nfc(name) if isinstance(name, str) else name)
    # It becomes a column name (``metric_<name>``) in records, DataFrames and CSV
    # headers, and is shown in summaries and progress bars: a NUL, an escape sequence
    # or a line break would garble each of them. Checked where names are given, as
    # tags are, so a score stored before still reads.
    refuse_control_characters(name, f"the metric name {name!r:.40}")
    return name


def merged(
    old: Score | None,
    message_id: str,
    *,
    branch: str | None,
    thumbs: str | None = None,
    score: int | None = None,
    tags: Iterable[str] = (),
    note: str | None = None,
    by: str | None = None,
    metrics: Mapping[str, object] | None = None,
    errors: Mapping[str, str] | None = None,
    succeeded: Iterable[str] = (),
    source: str | None = None,
    clear: bool = False,
    clear_metrics: bool = False,
) -> Score:
    """``old`` with a new rating merged in (the rules are in the module docstring).

    ``succeeded`` names scoring functions that succeeded this time: their recorded
    errors are cleared (even if their results named no metric after them, a mapping),
    and only theirs.
    ``source`` names the scoring function ``metrics`` and the rating came from: the
    metrics and rating fields it gave before and does not give now are dropped, and its
    rating fills only what no person rated; without it, the rating is a person's.
    Tags, metric names and ``by`` with control characters are refused (a score stored
    before with them still reads and merges).
    Raises :class:`~cm_notebook.errors.InvalidInputError` naming the bad field.
    """
    if isinstance(tags, str):
        raise InvalidInputError(f"tags must be a list of strings, e.g. [{tags!r}], not a string")
    if not isinstance(tags, Iterable):
        # A scoring function's mapping may hold anything under "tags".
        raise InvalidInputError(f"tags must be a list of strings, got {type(tags).__name__}")
    tags = list(tags)
    if any(not isinstance(tag, str) for tag in tags):
        raise InvalidInputError(f"tags must be strings, got {tags!r:.200}")
    for tag in tags:
        # Checked as they are given, not in Score: a score stored before still reads.
        refuse_control_characters(tag, f"the tag {tag!r:.40}")
    if isinstance(by, str):
        # A name shown wherever the score is: no escape sequence, NUL or line break.
        refuse_control_characters(by, f"by (who rated), {by!r:.40},")
    # Tags and metric names are NFC (see the module docstring): the ones given are
    # compared in that form with the stored ones, which Score made NFC when read.
    tags = [_nfc(tag) for tag in tags]
    succeeded = [_nfc(name) for name in succeeded]
    source = None if source is None else _nfc(source)
    now = utcnow()
    data: dict[str, Any] = (
        old.model_dump() if old is not None else {"message_id": message_id, "created_at": now}
    )
    if clear:
        data.update(thumbs=None, score=None, tags=[], note=None, by=None)
        data.update(rating_sources={}, tag_sources={})
    if clear_metrics:
        data.update(metrics={}, errors={}, metric_sources={})
    data.update(message_id=message_id, branch=branch, updated_at=now)
    failed = {_nfc(name): error for name, error in (errors or {}).items()}
    given = {metric_name(key): value for key, value in (metrics or {}).items()}
    # A function that failed this time has no current value: its old ones are dropped,
    # those named after it and those its mapping gave; and a function that ran again
    # replaces all it gave before (a metric its mapping no longer has is not current).
    # So with the rating fields it set (see _rating_sources).
    sources: dict[str, str] = dict(data.get("metric_sources", {}))
    rerun = {*failed, *([source] if source is not None else [])}
    rating = {"thumbs": thumbs, "score": score, "note": note, "by": by}
    rate_into(data, rating, tags, source=source, rerun=rerun)
    stale = {name for name, by_fn in sources.items() if by_fn in rerun} | set(failed)
    kept = {k: v for k, v in data.get("metrics", {}).items() if k not in stale}
    data["metrics"] = {**kept, **given}
    sources = {name: by_fn for name, by_fn in sources.items() if name not in stale}
    for name in given:
        if source is not None:
            sources[name] = source
        else:
            sources.pop(name, None)  # given by hand: no function's any more
    data["metric_sources"] = sources
    # Only a function's own success clears its error: another function's metric of
    # the same name says nothing about whether it works now.
    fresh = set(succeeded)
    kept_errors = {k: v for k, v in data.get("errors", {}).items() if k not in fresh}
    data["errors"] = {**kept_errors, **failed}
    try:
        return Score.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(
            f"cannot rate message {message_id!r}: {_problems(exc)}. Thumbs are 'up' or "
            "'down', a score a whole number from 1 to 5, tags short strings, metrics finite "
            "numbers."
        ) from None


def stored_score(data: object, message_id: str) -> Score:
    """``data``, read from a store as the score of ``message_id``, as a :class:`Score`.

    Raises ValueError saying what ``data`` is instead, to follow "it is": not a valid
    score (a field this version does not know, a wrong type, ...), or the score of
    another message.
    """
    try:
        score = Score.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"not a valid score ({_problems(exc)})") from None
    if score.message_id != message_id:
        raise ValueError(f"the score of another message, {score.message_id!r:.120}")
    return score


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
    )


_RATING_KEYS = frozenset({"thumbs", "score", "tags", "note"})


def interpret(name: str, result: object) -> dict[str, Any]:
    """What a scoring function's ``result`` means, as keyword arguments of :func:`merged`.

    A bool, int or float is the metric ``name``; a mapping may rate (``thumbs``,
    ``score``, ``tags``, ``note``) and give metrics under its other keys.
    """
    result = _plain(result)
    if isinstance(result, (bool, int, float)):
        return {"metrics": {name: result}}
    if isinstance(result, Mapping):
        rating = {key: _plain(value) for key, value in result.items() if key in _RATING_KEYS}
        metrics: dict[str, object] = {}
        for key, value in result.items():
            if key in _RATING_KEYS:
                continue
            value = _plain(value)
            if not isinstance(value, (bool, int, float)):
                raise InvalidInputError(
                    f"scoring function {name!r} gave {key!r}={value!r:.80}; metric values "
                    "must be numbers or bools (or use the keys thumbs, score, tags, note)"
                )
            metrics[metric_name(key)] = value
        if "tags" in rating and rating["tags"] is None:
            rating.pop("tags")
        return {**rating, "metrics": metrics}
    raise InvalidInputError(
        f"scoring function {name!r} returned {type(result).__name__}; return a number, a "
        "bool, or a mapping of metric names to numbers (or thumbs/score/tags/note)"
    )


def _plain(value: object) -> object:
    # numpy's scalars (np.int64, np.float32, and np.bool_, which ``np.mean(x) > 3``
    # gives) are not Python's numbers; their item() is. So is a one-element array's.
    if type(value).__module__ == "numpy":
        item = getattr(value, "item", None)
        if callable(item):
            try:
                return item()
            except (TypeError, ValueError):  # an array of several values: not a number
                return value
    return value
