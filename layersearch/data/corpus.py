"""The unlabelled distillation corpus, tokenized into fixed-length blocks.

Text comes from plain files or folders (WikiText's markup is undone) or from
a hub dataset. Lines are tokenized with the teacher's tokenizer, concatenated
and cut into blocks of ``seq_length`` tokens framed by the tokenizer's own
``cls_token ... sep_token`` (``[CLS] ... [SEP]`` for BERT, ``<s> ... </s>`` for RoBERTa),
the input BERT saw in pre-training. ``datasets.map`` caches each step, so a
second run over the same files and tokenizer reads the blocks from disk.

Cleaning and tokenizing run in ``corpus.num_proc`` processes; grouping into
blocks runs in one, because it cuts blocks per batch of lines and ``datasets``
shards by row count: sharding it would move block boundaries with num_proc.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from datasets import Dataset, load_dataset
from datasets.exceptions import DatasetGenerationError

from layersearch.config import CorpusConfig
from layersearch.errors import UserError

# WikiText escapes in-word hyphens, thousands separators and decimal points
# as " @-@ ", " @,@ ", " @.@ "; headings look like " = Title = ".
_WIKITEXT_MARKER = re.compile(r" @([-,.])@ ")
_WIKITEXT_HEADING = re.compile(r"^\s*(=+)\s.*\s\1\s*$")


class CorpusError(UserError):
    pass


def clean_wikitext(line: str) -> str | None:
    """One WikiText line as plain text, or None for headings and blanks."""
    if not line.strip() or _WIKITEXT_HEADING.match(line):
        return None
    return _WIKITEXT_MARKER.sub(r"\1", line).strip()


def corpus_files(cfg: CorpusConfig) -> list[Path]:
    files: list[Path] = []
    for entry in cfg.paths or []:
        p = Path(entry).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not found:
                raise CorpusError(f"corpus.paths: folder {p} holds no files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise CorpusError(f"corpus.paths: {p} not found")
    return files


def _not_utf8(files: list[str]) -> str:
    """Which corpus file stopped the text loader, and how to fix it."""
    for name in files:
        try:
            Path(name).read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            return (f"corpus.paths: {name} is not UTF-8 text (byte {err.object[err.start]:#04x} at "
                    f"offset {err.start}); convert it (iconv -t utf-8) or leave it out")
    return "corpus.paths: a corpus file is not UTF-8 text; convert it (iconv -t utf-8) or leave it out"


def _is_wikitext(cfg: CorpusConfig, path: str) -> bool:
    if cfg.format != "auto":
        return cfg.format == "wikitext"
    return "wiki" in Path(path).name.lower() or "wiki" in str(Path(path).parent).lower()


def num_proc(cfg: CorpusConfig) -> int | None:
    """Processes for the per-line maps; None (in-process) for one, since datasets forks even for 1."""
    n = cfg.num_proc or min(4, os.cpu_count() or 1)
    return n if n > 1 else None


def load_text(cfg: CorpusConfig) -> Dataset:
    """A dataset with one ``text`` column of cleaned, non-empty lines."""
    if cfg.hub is not None:
        ds = load_dataset(cfg.hub.name, cfg.hub.config, split=cfg.hub.split)
        if cfg.hub.text_column != "text":
            ds = ds.rename_column(cfg.hub.text_column, "text")
        ds = ds.select_columns(["text"])
        wikitext = cfg.format == "wikitext" or (cfg.format == "auto" and "wiki" in cfg.hub.name)
        sources = [wikitext]
    else:
        files = [str(f) for f in corpus_files(cfg)]
        try:
            ds = load_dataset("text", data_files={"train": files}, split="train")
        except DatasetGenerationError as exc:
            if isinstance(exc.__cause__, UnicodeDecodeError):
                raise CorpusError(_not_utf8(files)) from None
            raise
        sources = [_is_wikitext(cfg, f) for f in files]
    if any(sources):
        # Mixed folders are rare; cleaning everything as WikiText is harmless
        # for plain prose (it only drops "= x =" lines and undoes @-@ markers).
        def clean(batch):
            return {"text": [clean_wikitext(t) or "" for t in batch["text"]]}

        ds = ds.map(clean, batched=True, num_proc=num_proc(cfg), desc="clean wikitext")
    return ds.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True,
                     num_proc=num_proc(cfg), desc="drop blanks")


def tokenize_blocks(text: Dataset, tokenizer, seq_length: int, procs: int | None = None) -> Dataset:
    """Concatenate token ids and cut them into ``cls_token x sep_token`` blocks.

    ``procs`` processes tokenize; the blocks do not depend on it.
    """
    body = seq_length - 2
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise CorpusError("teacher tokenizer has no cls_token/sep_token to frame blocks with; "
                          "use a teacher of a supported family (docs/families.md)")

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        return {"ids": ids}

    def group(batch):
        flat = [t for ids in batch["ids"] for t in ids]
        n = len(flat) // body  # the tail shorter than a block is dropped, as in run_mlm
        return {
            "input_ids": [[cls_id, *flat[i * body:(i + 1) * body], sep_id] for i in range(n)]
        }

    ids = text.map(tokenize, batched=True, remove_columns=text.column_names, num_proc=procs,
                   desc="tokenize")
    # One process on purpose (see the module docstring): blocks must not depend on num_proc.
    return ids.map(group, batched=True, batch_size=1000, remove_columns=["ids"], desc="group blocks")


def load_blocks(cfg: CorpusConfig, tokenizer) -> Dataset:
    blocks = tokenize_blocks(load_text(cfg), tokenizer, cfg.seq_length, num_proc(cfg))
    if len(blocks) == 0:
        raise CorpusError(
            f"corpus: no block of {cfg.seq_length} tokens could be made; add text or lower corpus.seq_length"
        )
    return blocks
