"""Text sources and the ragged token store.

Two sources: ``wordnet`` (WordNet 3.0's glosses labelled with their lexicographer file, the
45 "supersenses"; Debian's ``wordnet-base``) and ``text`` (a user's JSON Lines or CSV file, or a
train/test pair, with a text column and a label column). Texts are tokenised by a Hugging Face
``tokenizers`` word-level model whose vocabulary comes from the train split only (or a given
``tokenizer.json``)
and stored ragged: one flat int32 array of token ids per split plus int64 offsets, memory-mapped.

Layout of a text store directory::

    meta.json          task, fingerprint, tokenizer (sha256, vocab), max_length, counts per split
    tokenizer.json     the tokenizer (covered by the fingerprint)
    train_tokens.npy   int32 [T]      token ids of every example, concatenated
    train_offsets.npy  int64 [N + 1]  example i is tokens[offsets[i]:offsets[i + 1]]
    train_y.npy        int64 [N]
    train_rows.npy     int64 [N]      the source row each example came from (ids are row numbers
                                      of the store; dropped empty texts leave gaps in these)
    test_*.npy         the same for the test split
    holdout_ids.npy    as for images (data.holdout_fraction)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from selectkit.validation import UsageError

if TYPE_CHECKING:
    from selectkit.config import DataConfig

log = logging.getLogger(__name__)

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
TEXT_PARTS = ("tokens", "offsets", "y", "rows")
WORDNET_DIR = "/usr/share/wordnet"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
# lexnames(5WN): the lexicographer files of WordNet 3.0, by number
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
]


@dataclass
class TextSource:
    """Texts and labels of both splits, before tokenisation."""

    train_texts: List[str]
    train_y: np.ndarray
    train_rows: np.ndarray
    test_texts: List[str]
    test_y: np.ndarray
    test_rows: np.ndarray
    class_names: List[str]
    description: str
    dropped_empty: Dict[str, int]


# ---------------------------------------------------------------------------- reading
def check_text_source(cfg: DataConfig) -> None:
    """The cheap part of reading a text source: its files exist (the `check` stage runs this)."""
    if cfg.source == "wordnet":
        d = Path(cfg.path or WORDNET_DIR)
        missing = [f for f in WORDNET_FILES if not (d / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"data.path={str(d)!r} lacks WordNet's {', '.join(missing)}: on Debian run `apt-get install "
                f"wordnet-base` (they land in {WORDNET_DIR}), or point data.path at a WordNet 3.0 dict/ folder")
    elif cfg.source == "text":
        for key in ("path", "test_path"):
            p = getattr(cfg, key)
            if p is None:
                continue
            if not Path(p).is_file():
                raise FileNotFoundError(f"data.{key}={p!r}: no such file. Expected a JSON Lines (.jsonl) or CSV "
                                        f"(.csv) file with columns {cfg.text_column!r} and {cfg.label_column!r}")
            text_format(cfg, p, f"data.{key}")
    if cfg.tokenizer is not None and not tokenizer_file(cfg.tokenizer).is_file():
        raise FileNotFoundError(f"data.tokenizer={cfg.tokenizer!r}: no tokenizer.json there. Pass a text store "
                                f"directory or a tokenizer.json file, or null to train one on the train split")


def tokenizer_file(path: str | Path) -> Path:
    p = Path(path)
    return p / "tokenizer.json" if p.is_dir() else p


def text_format(cfg: DataConfig, path: str | Path, key: str = "data.path") -> str:
    if cfg.format != "auto":
        return cfg.format
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise UsageError(f"{key}={str(path)!r}: cannot tell the format from the suffix {suffix!r}: name the file "
                     f".jsonl or .csv, or set data.format: jsonl | csv")


def _decode(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8") and raw.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"  # a byte-order mark (as spreadsheet programs write) is not part of the header
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UsageError(
            f"{path}: byte {e.start} (line {line}) is not valid {encoding} ({e.reason}): the file is in another "
            f"encoding. Set data.encoding to it (e.g. latin-1, cp1252, utf-16), or convert the file with "
            f"`iconv -f <encoding> -t utf-8`") from None
    except LookupError:
        raise UsageError(f"data.encoding={encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1)") from None


def _read_rows(cfg: DataConfig, path: Path) -> Tuple[List[Any], List[Any]]:
    """(texts, labels) of every data row of a JSON Lines or CSV file; None where missing."""
    fmt = text_format(cfg, path)
    data = _decode(path, cfg.encoding)
    texts: List[Any] = []
    labels: List[Any] = []
    tc, lc = cfg.text_column, cfg.label_column
    if fmt == "jsonl":
        # only \n ends a record: str.splitlines would also split on U+2028, U+0085 and other
        # characters that JSON strings may hold unescaped
        for n, line in enumerate(data.split("\n"), 1):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{n}: not a JSON object ({e.msg}): write one JSON object per line") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{n}: a JSON {type(row).__name__}, not an object with keys "
                                 f"{tc!r} and {lc!r}")
            for key, name in ((tc, "text_column"), (lc, "label_column")):
                if key not in row and not texts:
                    raise UsageError(f"{path}:{n} has no key {key!r} (keys: {sorted(row)}): set data.{name}")
            texts.append(row.get(tc))
            labels.append(row.get(lc))
    else:
        delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else ","
        # the csv module's own line handling: quoted fields may hold newlines
        reader = csv.DictReader(io.StringIO(data, newline=""), delimiter=delimiter)
        cols = reader.fieldnames or []
        for key, name in ((tc, "text_column"), (lc, "label_column")):
            if key not in cols:
                raise UsageError(f"{path}: no column {key!r} in the header {cols}: set data.{name}")
        for row in reader:
            texts.append(row.get(tc))
            labels.append(row.get(lc))
    if not texts:
        raise UsageError(f"{path} holds no rows")
    return texts, labels


def _label_key(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _natural(names: List[str]) -> List[str]:
    return sorted(names, key=lambda s: (0, int(s), s) if re.fullmatch(r"-?\d+", s) else (1, 0, s))


def _encode_labels(labels: List[Any], class_names: List[str], where: str, fix: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(class_names)}
    missing = [i for i, v in enumerate(labels) if v is None or (isinstance(v, str) and not v.strip())]
    if missing:
        raise UsageError(f"{where}: rows {missing[:10]} ({len(missing)} in all) have no label: fill them in, or "
                         f"remove those rows")
    keys = [_label_key(v) for v in labels]
    unknown = [(i, k) for i, k in enumerate(keys) if k not in index]
    if unknown:
        vals = sorted({k for _, k in unknown})
        raise UsageError(f"{where}: rows {[i for i, _ in unknown[:10]]} ({len(unknown)} in all) have labels "
                         f"{vals[:10]} that are not classes {class_names[:20]}: {fix}")
    return np.array([index[k] for k in keys], dtype=np.int64)


def _drop_empty(texts: List[Any], labels: Any, cfg: DataConfig, where: str, names: Optional[List[str]] = None,
                fix: str = "") -> Tuple[List[str], np.ndarray, np.ndarray, int]:
    """(texts, labels, source rows, number dropped): empty texts dropped (or refused) before
    the labels of the rest are encoded (``names`` given) or taken as they are."""
    bad = [i for i, t in enumerate(texts) if t is None or not str(t).strip()]
    if bad and cfg.empty == "error":
        raise UsageError(f"{where}: rows {bad[:10]} ({len(bad)} in all) have empty or whitespace-only texts: remove "
                         f"them, or set data.empty: drop to drop and count them")
    keep = np.setdiff1d(np.arange(len(texts)), np.array(bad, dtype=np.int64))
    if names is None:
        y = np.asarray(labels)[keep]
    else:  # rows are named by their position in the file, dropped ones included
        y = np.zeros(len(keep), dtype=np.int64)
        if len(keep):
            kept_labels = [labels[i] for i in keep]
            try:
                y = _encode_labels(kept_labels, names, where, fix)
            except UsageError as e:
                raise UsageError(_renumber(str(e), keep)) from None
    return [str(texts[i]) for i in keep], y, keep.astype(np.int64), len(bad)


def _renumber(message: str, keep: np.ndarray) -> str:
    """A label error's row list given in file rows, not in positions among the kept rows."""
    m = re.search(r"rows \[([0-9, ]*)\]", message)
    if not m:
        return message
    rows = [int(keep[int(v)]) for v in m.group(1).split(",") if v.strip()]
    return message[:m.start()] + f"rows {rows}" + message[m.end():]


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train positions, test positions), sorted: ``round(fraction * n_c)`` of every class ``c``
    to the test split, a seeded draw per class."""
    rng = np.random.default_rng([seed, 0x7E57])
    test = []
    for c in np.unique(y):
        ids = np.flatnonzero(y == c)
        test.append(ids[rng.permutation(len(ids))[:int(round(fraction * len(ids)))]])
    test_ids = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(y)), test_ids), test_ids


def read_wordnet(cfg: DataConfig) -> Tuple[List[str], List[int], str]:
    """Every synset's gloss and lexicographer file number, in file order (noun, verb, adj,
    adv; each file in its byte order). WordNet's files are Latin-1."""
    d = Path(cfg.path or WORDNET_DIR)
    texts, labels = [], []
    for name in WORDNET_FILES:
        with open(d / name, encoding="latin-1") as f:
            for n, line in enumerate(f, 1):
                if line.startswith("  "):  # the licence header
                    continue
                head, sep, gloss = line.partition(" | ")
                fields = head.split(" ")
                if len(fields) < 4 or not fields[1].isdigit():
                    raise UsageError(f"{d / name}:{n} is not a WordNet data line (offset lex_filenum ss_type ...): "
                                     f"point data.path at WordNet 3.0's dict/ folder")
                texts.append(gloss.strip() if sep else "")
                labels.append(int(fields[1]))
    return texts, labels, f"wordnet:{d.resolve()}"


def read_text_source(cfg: DataConfig) -> TextSource:
    """Both splits' texts and labels, empty texts dropped (and counted) or rejected."""
    check_text_source(cfg)
    if cfg.source == "wordnet":
        texts, labels, desc = read_wordnet(cfg)
        names = cfg.class_names or LEXNAMES
        bad = sorted({v for v in labels if v >= len(names)})
        if bad:
            raise UsageError(f"{desc}: lexicographer file numbers {bad} have no name in data.class_names "
                             f"({len(names)} names): list all of them, or leave data.class_names unset")
        y = np.asarray(labels, dtype=np.int64)
        tr_texts, tr_y, tr_rows, tr_drop = _drop_empty(texts, y, cfg, desc)
        tr, te = stratified_split(tr_y, cfg.test_fraction, cfg.split_seed)
        return TextSource([tr_texts[i] for i in tr], tr_y[tr], tr_rows[tr], [tr_texts[i] for i in te], tr_y[te],
                          tr_rows[te], list(names), f"{desc} (test_fraction={cfg.test_fraction}, "
                          f"split_seed={cfg.split_seed})", {"all": tr_drop})
    path = Path(cfg.path)  # type: ignore[arg-type]
    texts, labels = _read_rows(cfg, path)
    test = _read_rows(cfg, Path(cfg.test_path)) if cfg.test_path else None
    if cfg.class_names:
        names = list(cfg.class_names)
        fix = "add them to data.class_names, or fix the labels"
    else:
        present = [labels[i] for i, t in enumerate(texts) if labels[i] is not None]
        names = _natural(sorted({_label_key(v) for v in present if not (isinstance(v, str) and not v.strip())}))
        fix = "every test label must occur in the train file; list every class in data.class_names"
    tr_texts, tr_y, tr_rows, drop = _drop_empty(texts, labels, cfg, str(path), names, fix)
    if test is not None:
        te_texts, te_y, te_rows, te_drop = _drop_empty(test[0], test[1], cfg, str(cfg.test_path), names, fix)
        dropped = {"train": drop, "test": te_drop}
        desc = f"text:{path.resolve()}+{Path(cfg.test_path).resolve()}"  # type: ignore[arg-type]
    else:
        tr, te = stratified_split(tr_y, cfg.test_fraction, cfg.split_seed)
        te_texts, te_y, te_rows = [tr_texts[i] for i in te], tr_y[te], tr_rows[te]
        tr_texts, tr_y, tr_rows = [tr_texts[i] for i in tr], tr_y[tr], tr_rows[tr]
        dropped = {"all": drop}
        desc = f"text:{path.resolve()} (test_fraction={cfg.test_fraction}, split_seed={cfg.split_seed})"
    return TextSource(tr_texts, tr_y, tr_rows, te_texts, te_y, te_rows, names, desc, dropped)


# ---------------------------------------------------------------------------- tokenising
def train_tokenizer(texts: List[str], vocab_size: int, min_frequency: int, lowercase: bool):
    """A word-level tokenizer (Hugging Face ``tokenizers``: BERT's normaliser and pre-tokeniser,
    a WordLevel model) whose vocabulary is the ``vocab_size - 2`` most frequent words of
    ``texts`` seen at least ``min_frequency`` times; [PAD] is id 0, [UNK] id 1.

    The vocabulary is chosen here, ties broken by the word, so the same texts always give the
    same ids (the library's trainers break ties in hash order, which changes between runs and
    would change the store's fingerprint). Words, as fastText's proxy uses them.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for t in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t)))
    words = sorted((w for w, n in counts.items() if n >= min_frequency), key=lambda w: (-counts[w], w))
    vocab = {PAD: PAD_ID, UNK: UNK_ID}
    for w in words[:max(vocab_size - len(vocab), 0)]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    return tok


def load_tokenizer(path: str | Path):
    """A tokenizer.json (or a text store's), checked for [PAD] = 0 and [UNK] = 1."""
    from tokenizers import Tokenizer

    p = tokenizer_file(path)
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:
        raise UsageError(f"{p} is not a Hugging Face tokenizer.json ({type(e).__name__}: {e})") from None
    if tok.token_to_id(PAD) != PAD_ID or tok.token_to_id(UNK) != UNK_ID:
        raise UsageError(f"tokenizer {p} has {PAD}={tok.token_to_id(PAD)} and {UNK}={tok.token_to_id(UNK)}; selectkit "
                         f"pads with id {PAD_ID} and needs {PAD} = {PAD_ID}, {UNK} = {UNK_ID}: use a tokenizer written "
                         f"by selectkit's prepare stage")
    return tok


def encode(tok, texts: List[str], max_length: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat int32 token ids, int64 offsets [N + 1], each text's untruncated length), every
    text cut to ``max_length`` tokens."""
    lengths = np.zeros(len(texts), dtype=np.int64)
    chunks = []
    step = 8192
    for i in range(0, len(texts), step):
        for j, enc in enumerate(tok.encode_batch(texts[i:i + step], add_special_tokens=False)):
            ids = enc.ids
            lengths[i + j] = len(ids)
            chunks.append(np.asarray(ids[:max_length], dtype=np.int32))
    kept = np.minimum(lengths, max_length)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(kept, out=offsets[1:])
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    return tokens, offsets, lengths


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_text_store(cfg: DataConfig, out: str | Path) -> Dict[str, Any]:
    """Read, tokenise and write a text store atomically (see the module docstring)."""
    from selectkit.store import FORMAT_VERSION, fingerprint_arrays, fresh_dir, holdout_split, replace_dir

    src = read_text_source(cfg)
    present = np.unique(src.train_y)
    if len(present) < 2:
        raise UsageError(f"{src.description}: every train example has label "
                         f"{src.class_names[int(present[0])] if len(present) else None!r}: a classifier needs at least "
                         f"2 classes; check data.label_column={cfg.label_column!r}")
    if not src.train_texts or not src.test_texts:
        raise UsageError(f"{src.description}: the {'train' if not src.train_texts else 'test'} split is empty after "
                         f"dropping empty texts: give more rows, or a larger data.test_fraction")
    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
        tok_source = str(tokenizer_file(cfg.tokenizer).resolve())
    else:
        tok = train_tokenizer(src.train_texts, cfg.vocab_size, cfg.min_frequency, cfg.lowercase)
        tok_source = "trained on the train split"
    arrays: Dict[str, np.ndarray] = {}
    stats: Dict[str, Dict[str, Any]] = {}
    for split, texts, y, rows in (("train", src.train_texts, src.train_y, src.train_rows),
                                  ("test", src.test_texts, src.test_y, src.test_rows)):
        tokens, offsets, lengths = encode(tok, texts, cfg.max_length)
        empty = np.flatnonzero(lengths == 0)
        if empty.size:  # texts the normaliser turns into nothing (e.g. only control characters)
            raise UsageError(f"{split} split: source rows {rows[empty[:10]].tolist()} tokenise to nothing: remove "
                             f"them (data.empty: drop only drops texts that are empty or whitespace)")
        long = np.flatnonzero(lengths > cfg.max_length)
        if long.size and cfg.long == "error":
            raise UsageError(f"{split} split: source rows {rows[long[:10]].tolist()} ({long.size} in all) are longer "
                             f"than data.max_length={cfg.max_length} tokens (the longest has {int(lengths.max())}): "
                             f"raise data.max_length, or set data.long: truncate to cut and count them")
        arrays.update({f"{split}_tokens": tokens, f"{split}_offsets": offsets, f"{split}_y": y,
                       f"{split}_rows": rows.astype(np.int64)})
        kept = np.diff(offsets)
        stats[split] = {"size": int(len(y)), "truncated": int(long.size),
                        "token_count": int(len(tokens)), "mean_length": float(kept.mean()),
                        "longest": int(kept.max()), "longest_untruncated": int(lengths.max()),
                        "unknown_tokens": int((tokens == UNK_ID).sum()),
                        "class_counts": np.bincount(y, minlength=len(src.class_names)).tolist()}
        if long.size:
            log.warning("%s split: %d texts longer than data.max_length=%d tokens were truncated (longest %d)",
                        split, long.size, cfg.max_length, int(lengths.max()))
    holdout = (holdout_split(src.train_y, cfg.holdout_fraction, cfg.split_seed, src.class_names)
               if cfg.holdout_fraction > 0 else None)
    out = Path(out)
    tmp = fresh_dir(out)
    tok.save(str(tmp / "tokenizer.json"))
    tok_sha = file_sha256(tmp / "tokenizer.json")
    for name, a in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(a))
    hashed = dict(arrays)
    if holdout is not None:
        np.save(tmp / "holdout_ids.npy", holdout)
        hashed["holdout_ids"] = holdout
    meta: Dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": "text_classification",
        # the tokenizer is part of what the ids mean: another vocabulary is another store
        "fingerprint": fingerprint_arrays(hashed, src.class_names, extra=tok_sha.encode()),
        "source": src.description,
        "class_names": list(src.class_names),
        "num_classes": len(src.class_names),
        "tokenizer": {"file": "tokenizer.json", "sha256": tok_sha, "kind": "WordLevel", "source": tok_source,
                      "vocab_size": int(tok.get_vocab_size()),
                      "lowercase": cfg.lowercase if not cfg.tokenizer else "as in the reused tokenizer",
                      "pad_id": PAD_ID, "unk_id": UNK_ID},
        "max_length": cfg.max_length,
        "dropped_empty": src.dropped_empty,
        "splits": {s: {**stats[s], **{p: {"shape": list(arrays[f"{s}_{p}"].shape), "dtype": str(arrays[f"{s}_{p}"].dtype)}
                                      for p in TEXT_PARTS}} for s in ("train", "test")},
    }
    if holdout is not None:
        meta["holdout"] = {"fraction": cfg.holdout_fraction, "seed": cfg.split_seed, "size": int(len(holdout)),
                           "class_counts": np.bincount(src.train_y[holdout], minlength=len(src.class_names)).tolist()}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    replace_dir(tmp, out)
    log.info("wrote text store %s (fingerprint %s; %d + %d examples, %d truncated, %s dropped as empty)", out,
             meta["fingerprint"], stats["train"]["size"], stats["test"]["size"],
             stats["train"]["truncated"] + stats["test"]["truncated"], src.dropped_empty)
    return meta
