"""Named hotword sets: words and a correction dictionary, kept by the service, versioned.

A set is created, listed, replaced and deleted through `/api/hotword_sets` and stored in the
service's SQLite database (the job database, its own table). A request names sets; `resolve`
turns the names into the recogniser's words, the corrections and the versions used, before the
pipeline runs, so a result records exactly what it was given (`applied.hotword_sets`). Batch jobs
store the resolved words with the job: a set changed later never changes a job.

Versions: a set starts at 1 and goes up by one whenever a replacement changes its words or
corrections. A deleted set keeps its row (without words) so that a set created again under the
same name continues from the next version: a (name, version) pair always means one content.

Reads on the request path come from memory: the sets are loaded when the store opens and every
write updates the copy after its transaction commits. One process writes the database (the
server); the CLI only reads it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.errors import HotwordError, HotwordSetExistsError, HotwordSetNotFoundError, OptionsError
from asr.pipeline.corrections import CorrectionList
from asr.pipeline.hotwords import parse_hotwords
from asr.pipeline.options import SET_NAME, Options
from asr.pipeline.result import HotwordSetUse
from asr.service.jobs import connect_database, transaction
from asr.settings import LimitSettings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hotword_sets (
    name         TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,          -- 1, then +1 whenever the words or corrections change
    words        TEXT NOT NULL,             -- JSON list of plain words
    corrections  TEXT NOT NULL,             -- JSON list of [wrong, right]
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    deleted      INTEGER NOT NULL DEFAULT 0 -- kept so a set created again continues its versions
);
"""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class HotwordSet:
    """One named set as stored."""

    name: str
    version: int
    words: tuple[str, ...]
    corrections: CorrectionList
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        """The API's JSON shape (corrections as an object: wrong -> right, in order)."""
        return {
            "name": self.name,
            "version": self.version,
            "words": list(self.words),
            "corrections": dict(self.corrections),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def summary(self) -> dict[str, Any]:
        """What the list shows: no words."""
        return {
            "name": self.name,
            "version": self.version,
            "words": len(self.words),
            "corrections": len(self.corrections),
            "updated_at": self.updated_at,
        }


def check_name(name: str) -> str:
    """A set's name, or HotwordError saying what a name may hold."""
    if not isinstance(name, str) or not SET_NAME.match(name):
        raise HotwordError(
            f"{str(name)[:40]!r} is not a valid hotword set name: 1 to 64 letters (Chinese too), digits, '-', '_' "
            "or '.', not starting with '-' or '.'."
        )
    return name


def parse_corrections(
    value: Mapping[str, str] | Iterable[Sequence[str]] | None, *, max_count: int, max_chars: int
) -> CorrectionList:
    """(wrong, right) pairs from a JSON object (wrong -> right) or a list of pairs, checked:
    both sides plain text of 1 to `max_chars` characters, wrong != right, each wrong form once,
    at most `max_count` (HotwordError naming the limit's setting)."""
    if value is None:
        return ()
    pairs = list(value.items()) if isinstance(value, Mapping) else [tuple(p) for p in value]
    out: dict[str, str] = {}
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise HotwordError("A correction is a pair of texts: the wrong form and the right one.")
        wrong, right = (" ".join(x.split()) for x in pair)  # one space between words, as results write them
        for side in (wrong, right):
            if not side:
                raise HotwordError("A correction's wrong and right forms must not be empty.")
            if _CONTROL.search(side):
                raise HotwordError("Corrections must not contain control characters.")
            if len(side) > max_chars:
                raise HotwordError(
                    f"The correction text '{side[:20]}…' has {len(side)} characters; the limit is {max_chars} "
                    "(limits.max_hotword_chars)."
                )
        if wrong == right:
            raise HotwordError(f"The correction '{wrong[:20]}' replaces a text with itself.")
        if wrong in out:
            raise HotwordError(f"The wrong form '{wrong[:20]}' is listed twice.")
        out[wrong] = right
        if len(out) > max_count:
            raise HotwordError(
                f"Too many corrections in one hotword set: the limit is {max_count} (limits.max_set_corrections)."
            )
    return tuple(out.items())


class HotwordSetStore:
    """The sets in SQLite, with a copy in memory for requests. Safe to use from several threads."""

    def __init__(self, db_path: str | Path, limits: LimitSettings, *, shared: bool = False) -> None:
        """``shared``: other processes write the same database (several HTTP workers): the sets
        are read again whenever it changed since (SQLite's data_version, one cheap pragma)."""
        self.db_path = Path(db_path)
        self.limits = limits
        self._lock = threading.Lock()
        self._db = connect_database(self.db_path)
        self._db.executescript(_SCHEMA)
        self._sets: dict[str, HotwordSet] = {}
        self._shared = shared
        self._version = -1
        self._load()

    def _fresh(self) -> None:
        if not self._shared:
            return
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version == self._version:
                return
            self._version = version
        self._load()

    @classmethod
    def open_existing(cls, db_path: str | Path, limits: LimitSettings) -> HotwordSetStore:
        """The store of a server's database (for the CLI); OptionsError when there is none."""
        if not Path(db_path).is_file():
            raise OptionsError(
                f"No hotword sets: there is no service database at {db_path} (sets are created through "
                "the server's /api/hotword_sets; point --data-dir at the server's data directory).",
                code="unknown_hotword_set",
            )
        return cls(db_path, limits)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _load(self) -> None:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, version, words, corrections, created_at, updated_at FROM hotword_sets WHERE deleted=0"
            ).fetchall()
        self._sets = {r[0]: _from_row(r) for r in rows}

    # ---- reading -------------------------------------------------------------------------------

    def list(self) -> list[HotwordSet]:
        """Every set, by name."""
        self._fresh()
        return sorted(self._sets.values(), key=lambda s: s.name)

    def get(self, name: str) -> HotwordSet:
        self._fresh()
        found = self._sets.get(name)
        if found is None:
            raise HotwordSetNotFoundError(f"No hotword set named '{str(name)[:64]}'.")
        return found

    def resolve(self, options: Options) -> Options:
        """`options` with its named sets turned into words (the sets' words in the order named,
        then the request's own), corrections (a later set's entry wins for the same wrong form)
        and the versions used. The words together stay within `limits.max_hotwords`."""
        if options.sets_resolved:
            return options  # none named, or resolved already (a stored job's options)
        self._fresh()
        used: list[HotwordSetUse] = []
        words: list[str] = []
        corrections: dict[str, str] = dict(options.corrections)
        for name in options.set_names:
            found = self._sets.get(name)
            if found is None:
                raise OptionsError(
                    f"No hotword set named '{name[:64]}' (GET /api/hotword_sets lists them).",
                    code="unknown_hotword_set",
                )
            used.append(HotwordSetUse(found.name, found.version))
            words.extend(found.words)
            corrections.update(found.corrections)
        merged = tuple(dict.fromkeys([*words, *options.hotwords]))
        if len(merged) > self.limits.max_hotwords:
            raise HotwordError(
                f"The named hotword sets and the request's own words make {len(merged)} hotwords; the limit is "
                f"{self.limits.max_hotwords} (limits.max_hotwords)."
            )
        return dataclasses.replace(options, hotwords=merged, corrections=tuple(corrections.items()),
                                   hotword_sets=tuple(used))

    # ---- writing -------------------------------------------------------------------------------

    def _content(self, words: str | Sequence[str] | None, corrections: Any) -> tuple[tuple[str, ...], CorrectionList]:
        limits = self.limits
        parsed = parse_hotwords(words, max_count=limits.max_set_words, max_chars=limits.max_hotword_chars,
                                count_setting="limits.max_set_words", what="words in one hotword set")
        return parsed, parse_corrections(corrections, max_count=limits.max_set_corrections,
                                         max_chars=limits.max_hotword_chars)

    def create(self, name: str, words: str | Sequence[str] | None = None, corrections: Any = None) -> HotwordSet:
        """A new set at version 1 (or the version after a deleted set of the same name)."""
        check_name(name)
        content = self._content(words, corrections)
        now = time.time()
        with transaction(self._db, self._lock) as db:
            row = db.execute("SELECT version, deleted FROM hotword_sets WHERE name=?", (name,)).fetchone()
            if row is not None and not row[1]:
                raise HotwordSetExistsError(
                    f"A hotword set named '{name}' exists already: replace it (PUT /api/hotword_sets/{name}) or "
                    "choose another name."
                )
            live = db.execute("SELECT COUNT(*) FROM hotword_sets WHERE deleted=0").fetchone()[0]
            if live >= self.limits.max_hotword_sets:
                raise HotwordError(
                    f"The service keeps at most {self.limits.max_hotword_sets} hotword sets "
                    "(limits.max_hotword_sets); delete one first.",
                    code="too_many_hotword_sets",
                )
            made = HotwordSet(name, 1 if row is None else row[0] + 1, *content, now, now)
            db.execute(
                "INSERT OR REPLACE INTO hotword_sets(name, version, words, corrections, created_at, updated_at, "
                "deleted) VALUES (?, ?, ?, ?, ?, ?, 0)",
                _row(made),
            )
            self._sets = {**self._sets, name: made}  # readers (requests) never see a dict change under them
        return made

    def replace(self, name: str, words: str | Sequence[str] | None = None, corrections: Any = None) -> HotwordSet:
        """New words and corrections for an existing set; its version goes up when they change."""
        content = self._content(words, corrections)
        self._fresh()
        with transaction(self._db, self._lock) as db:
            current = self._sets.get(name)
            if current is None:
                raise HotwordSetNotFoundError(f"No hotword set named '{str(name)[:64]}' (create it with POST).")
            if (current.words, current.corrections) == content:
                return current
            changed = dataclasses.replace(current, version=current.version + 1, words=content[0],
                                          corrections=content[1], updated_at=time.time())
            db.execute(
                "UPDATE hotword_sets SET version=?, words=?, corrections=?, updated_at=? WHERE name=?",
                (changed.version, *_row(changed)[2:4], changed.updated_at, name),
            )
            self._sets = {**self._sets, name: changed}
        return changed

    def delete(self, name: str) -> None:
        """Remove a set (jobs that used it keep the words they were given)."""
        self._fresh()
        with transaction(self._db, self._lock) as db:
            if name not in self._sets:
                raise HotwordSetNotFoundError(f"No hotword set named '{str(name)[:64]}'.")
            db.execute(
                "UPDATE hotword_sets SET deleted=1, words='[]', corrections='[]', updated_at=? WHERE name=?",
                (time.time(), name),
            )
            self._sets = {k: v for k, v in self._sets.items() if k != name}


def _row(s: HotwordSet) -> tuple[Any, ...]:
    return (s.name, s.version, json.dumps(list(s.words), ensure_ascii=False),
            json.dumps([list(p) for p in s.corrections], ensure_ascii=False), s.created_at, s.updated_at)


def _from_row(r: Sequence[Any]) -> HotwordSet:
    return HotwordSet(r[0], int(r[1]), tuple(json.loads(r[2])), tuple((w, c) for w, c in json.loads(r[3])),
                      float(r[4]), float(r[5]))


__all__ = ["HotwordSet", "HotwordSetStore", "check_name", "parse_corrections"]
