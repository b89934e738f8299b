"""A dry run of a dataset against a model's tokenizer, before any GPU time is spent.

One streaming pass per file finds every bad line (not just the first few), renders each example
exactly as training will (:func:`ftaas_core.encoding.encode_example`), and reports token counts,
what max_seq_length would cut, duplicates, train/validation overlap and a preview of the tokens
the loss sees; for preference pairs also their prompts' and answers' tokens and the pairs whose
answers are identical. Only the tokenizer is loaded, never the weights, so the API can answer it on CPU.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable
from functools import lru_cache

from jinja2 import TemplateError
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ftaas.types import (
    ExamplePreview,
    FileFindings,
    FileReport,
    PreferenceFindings,
    RepeatedExample,
    ReportError,
    TokenStats,
    TruncatedExample,
)
from ftaas_core.datasets import DatasetValidator
from ftaas_core.encoding import IGNORE_INDEX, EncodedExample, EncodedPair, encode
from ftaas_core.examples import Example, PreferenceExample

MAX_LISTED = 1000
"""Entries kept in each of a report's lists; the counts beside them are always complete."""
TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


@lru_cache(maxsize=8)
def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer at a local path or hub id, cached: parsing a large vocabulary takes seconds
    and the same few catalogue models are asked for again and again."""
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def _preview(
    tokenizer: PreTrainedTokenizerBase, line: int, encoded: EncodedExample, n_tokens: int
) -> ExamplePreview:
    """Decodes runs of trained and untrained tokens separately, so the markers sit exactly at
    the mask's edges, whatever the template's text around them looks like."""
    runs = itertools.groupby(
        zip(encoded.input_ids, encoded.labels, strict=True),
        key=lambda pair: pair[1] != IGNORE_INDEX,
    )
    parts = []
    for trained, run in runs:
        text = tokenizer.decode(
            [token for token, _ in run],
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        parts.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else text)
    return ExamplePreview(
        line=line,
        text="".join(parts),
        n_tokens=len(encoded.input_ids),
        n_trained_tokens=encoded.n_trained_tokens,
        truncated=n_tokens > len(encoded.input_ids),
    )


def _token_stats(lengths: list[int], trained: int) -> TokenStats | None:
    if not lengths:
        return None
    lengths = sorted(lengths)
    return TokenStats(
        min=lengths[0],
        mean=round(sum(lengths) / len(lengths), 2),
        p95=lengths[math.ceil(0.95 * len(lengths)) - 1],
        max=lengths[-1],
        total=sum(lengths),
        trained=trained,
    )


def _truncated(encoded: EncodedExample, limit: int) -> EncodedExample:
    return EncodedExample(encoded.input_ids[:limit], encoded.labels[:limit])


def _prompt_length(encoded: EncodedExample) -> int:
    """Tokens before the answer: a pair's row labels its answer only."""
    return next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)


class _PairScan:
    """What only preference pairs have: their prompts' and answers' tokens, identical answers."""

    def __init__(self, max_listed: int) -> None:
        self.max_listed = max_listed
        self.prompts: list[int] = []
        self.answers: tuple[list[int], list[int]] = ([], [])
        self.trained = [0, 0]
        self.n_identical = 0
        self.identical: list[int] = []

    def add(self, line: int, example: PreferenceExample, full: EncodedPair, limit: int) -> None:
        self.prompts.append(_prompt_length(full.chosen))
        for i, row in enumerate((full.chosen, full.rejected)):
            self.answers[i].append(row.n_trained_tokens)
            self.trained[i] += _truncated(row, limit).n_trained_tokens
        if example.preferred.content == example.non_preferred.content:
            self.n_identical += 1
            if len(self.identical) < self.max_listed:
                self.identical.append(line)

    def findings(self) -> PreferenceFindings | None:
        if not self.prompts:
            return None
        return PreferenceFindings(
            prompt_tokens=_token_stats(self.prompts, 0),
            preferred_tokens=_token_stats(self.answers[0], self.trained[0]),
            non_preferred_tokens=_token_stats(self.answers[1], self.trained[1]),
            n_identical=self.n_identical,
            identical=self.identical,
        )


class _FileScan:
    """Gathers one file's findings in a single pass, holding per example only its length and a
    hash of its parsed form (so duplicates are found whatever the JSON's spacing or key order)."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_seq_length: int, max_listed: int
    ) -> None:
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.max_listed = max_listed
        self.validator = DatasetValidator(max_errors=max_listed)
        self.lengths: list[int] = []
        self.trained_tokens = 0
        self.render_errors: list[ReportError] = []
        self.n_render_errors = 0
        self.truncated: list[TruncatedExample] = []
        self.n_truncated = 0
        self.first_lines: dict[int, int] = {}
        self.duplicates: list[RepeatedExample] = []
        self.n_duplicates = 0
        self.preview: ExamplePreview | None = None
        self.pairs = _PairScan(max_listed)

    def scan(self, chunks: Iterable[bytes]) -> FileFindings:
        for line, example in self.validator.examples(chunks):
            self._add(line, example)
        return self._findings()

    def _add(self, line: int, example: Example) -> None:
        try:
            full = encode(self.tokenizer, example, sys.maxsize)
        except (ValueError, TemplateError) as exc:
            self.n_render_errors += 1
            if len(self.render_errors) < self.max_listed:
                message = f"cannot be rendered with the model's chat template: {exc}"
                self.render_errors.append(ReportError(line=line, message=message))
            return
        # Encoded once at full length: the truncated form is its prefix, as in encode_example.
        limit = self.max_seq_length
        if isinstance(full, EncodedPair) and isinstance(example, PreferenceExample):
            self.pairs.add(line, example, full, limit)
            shown = _truncated(full.chosen, limit)
            trained = EncodedPair(shown, _truncated(full.rejected, limit)).n_trained_tokens
        else:
            shown = _truncated(full, limit)
            trained = shown.n_trained_tokens
        n_tokens = full.n_tokens
        self.lengths.append(n_tokens)
        self.trained_tokens += trained
        if self.preview is None:
            self.preview = _preview(self.tokenizer, line, shown, full.n_tokens)
        if n_tokens > self.max_seq_length:
            self.n_truncated += 1
            if len(self.truncated) < self.max_listed:
                self.truncated.append(
                    TruncatedExample(line=line, n_tokens=n_tokens, dropped=trained == 0)
                )
        first_line = self.first_lines.setdefault(hash(example), line)
        if first_line != line:
            self.n_duplicates += 1
            if len(self.duplicates) < self.max_listed:
                self.duplicates.append(RepeatedExample(line=line, first_line=first_line))

    def _findings(self) -> FileFindings:
        report = self.validator.finish()
        format_errors = [
            ReportError(line=e.line, field=e.field, message=e.message) for e in report.errors
        ]
        # Each list holds its own first errors in line order, so their merge holds the file's.
        errors = sorted([*format_errors, *self.render_errors], key=lambda e: e.line)
        return FileFindings(
            n_lines=report.n_lines,
            n_bytes=report.n_bytes,
            n_examples=report.n_examples - self.n_render_errors,
            n_errors=report.n_errors + self.n_render_errors,
            errors=errors[: self.max_listed],
            tokens=_token_stats(self.lengths, self.trained_tokens),
            n_truncated=self.n_truncated,
            truncated=self.truncated,
            n_duplicates=self.n_duplicates,
            duplicates=self.duplicates,
            format=report.format,
            preference=self.pairs.findings(),
        )


def build_report(
    tokenizer: PreTrainedTokenizerBase,
    model: str,
    training: Iterable[bytes],
    max_seq_length: int,
    validation: Iterable[bytes] | None = None,
    max_listed: int = MAX_LISTED,
) -> FileReport:
    """Report on a training file (and optionally its validation file), each a stream of byte
    chunks read once; ``model`` is only the name recorded in the report."""
    train_scan = _FileScan(tokenizer, max_seq_length, max_listed)
    findings = train_scan.scan(training)
    report = FileReport(
        **dict(findings),
        model=model,
        max_seq_length=max_seq_length,
        preview=train_scan.preview,
    )
    if validation is not None:
        valid_scan = _FileScan(tokenizer, max_seq_length, max_listed)
        report.validation = valid_scan.scan(validation)
        # An example in both files flatters the validation loss: the model has trained on it.
        overlap = [
            RepeatedExample(line=line, first_line=train_scan.first_lines[key])
            for key, line in valid_scan.first_lines.items()
            if key in train_scan.first_lines
        ]
        report.n_overlapping = len(overlap)
        report.overlapping = overlap[:max_listed]
    return report
