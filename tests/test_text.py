"""The text task: sources, the ragged token store, padded batches, text models, TF-IDF
features, grouping by length, every method on text, and every bad input the issue names."""


import numpy as np
import pytest
import torch

from selectkit.config import DataConfig, ModelConfig
from selectkit.methods import METHODS
from selectkit.store import Store, prepare
from selectkit.store.text import LEXNAMES, load_tokenizer, read_wordnet
from selectkit.tasks import task_for
from selectkit.tasks.text import LoadTokens, pad_rows
from selectkit.train import Trainer
from selectkit.validation import ConfigError, UsageError

from conftest import example_params, text_rows, tiny_train_cfg

WORDNET = "/usr/share/wordnet"


def _cfg(path, **kw):
    return DataConfig(source="text", path=str(path), vocab_size=200, min_frequency=1, **kw)


def test_tokenisation_round_trip_and_stable_ids(make_text, tmp_path):
    p = make_text(120)
    a = prepare(_cfg(p), tmp_path / "a")
    b = prepare(_cfg(p), tmp_path / "b")
    assert a["fingerprint"] == b["fingerprint"]  # same file, same seed: the same ids and tokens
    s = Store(tmp_path / "a")
    assert s.kind == "text_classification" and isinstance(s.train.tokens, np.memmap)
    assert a["splits"]["train"]["size"] + a["splits"]["test"]["size"] == 120
    rows = text_rows(120)
    tok = load_tokenizer(s.tokenizer_path)
    names = s.meta["class_names"]
    assert names == ["animal", "food", "tool"]
    for i in (0, 7, len(s.train) - 1):
        text, label = rows[int(s.train.rows[i])]  # each id names the source row it came from
        assert names[int(s.train.y[i])] == label
        assert s.train.example(i).tolist() == tok.encode(text, add_special_tokens=False).ids
        # lower-cased, punctuation split off: the words come back
        assert tok.decode(s.train.example(i).tolist()).replace(" .", ".") == text.lower()
    # a train/test split that is stratified and covers every row once
    all_rows = np.concatenate([s.train.rows, s.test.rows])
    assert sorted(all_rows.tolist()) == list(range(120))
    assert a["splits"]["test"]["class_counts"] == [8, 8, 8]
    s.verify()


def test_csv_source_and_train_test_pair(make_text, tmp_path):
    train = make_text(90, fmt="csv", text_column="body", label_column="topic")
    test = make_text(30, seed=1, fmt="csv", text_column="body", label_column="topic")
    meta = prepare(_cfg(train, test_path=str(test), text_column="body", label_column="topic"), tmp_path / "s")
    assert meta["splits"]["train"]["size"] == 90 and meta["splits"]["test"]["size"] == 30


def test_ragged_load_pads_and_masks(text_store):
    split = text_store.train
    ids = np.array([5, 0, 17, 3])
    item = LoadTokens(split)({"ids": ids, "epoch": 0, "index": 0})
    lengths = split.lengths()[ids]
    assert item["x"].shape == (4, lengths.max()) and item["x"].dtype == torch.int64
    assert item["mask"].sum(1).tolist() == lengths.tolist()
    for r, i in enumerate(ids):
        assert item["x"][r, :lengths[r]].tolist() == split.example(i).tolist()
        assert (item["x"][r, lengths[r]:] == 0).all()
    assert item["y"].tolist() == split.y[ids].tolist()
    np.testing.assert_array_equal(pad_rows(split.tokens, split.offsets, ids), item["x"].numpy())


def test_rows_of_different_widths_concatenate_and_trim(text_store):
    from selectkit.nodes.filter import concat_rows, take_rows

    task = task_for(text_store)
    lengths = text_store.train.lengths()
    short, long = np.argsort(lengths)[:3], np.argsort(lengths)[-3:]
    load = task.loader()
    a, b = load({"ids": short, "epoch": 0, "index": 0}), load({"ids": long, "epoch": 0, "index": 1})
    merged = concat_rows([a, b])
    assert merged["x"].shape == (6, lengths.max()) and merged["mask"].sum(1).tolist() == lengths[np.r_[short, long]].tolist()
    kept = take_rows(merged, np.arange(3))  # only the short rows: padding-only columns remain ...
    (tokens, mask), y = task.to_device(kept, torch.device("cpu"))
    assert tokens.shape[1] == lengths[short].max() == mask.sum(1).max()  # ... and are trimmed on the device


@pytest.mark.parametrize("name,args,epochs", [("fasttext", {}, 4), ("transformer", {"dim": 16, "heads": 2, "ff": 32}, 12),
                                              ("textcnn", {"dim": 16, "channels": 16}, 4)])
def test_text_models_learn_the_fixture(text_store, name, args, epochs):
    cfg = tiny_train_cfg(model={"name": name, "args": args}, optimizer="adam", lr=0.01, weight_decay=0.0, epochs=epochs,
                         input={"batch_size": 32, "group_by_length": 2})
    r = Trainer(text_store, cfg).fit()
    assert r.metrics["final_test_error"] < 0.4  # chance is 2/3
    assert r.metrics["spec"]["vocab_size"] == text_store.meta["tokenizer"]["vocab_size"]


def test_image_model_on_text_fails_naming_the_fix(text_store):
    from selectkit.models import make_model

    with pytest.raises(ConfigError, match="fasttext, transformer, textcnn"):
        make_model(ModelConfig("cnn"), task_for(text_store))


def test_costs_measure_text_models(text_store):
    from selectkit.costs import measure_costs

    task = task_for(text_store)
    c = measure_costs(ModelConfig("fasttext"), task.name, task.spec_dict(), task.num_classes, 32, 32, reps=2)
    assert c["ratio"] > 0 and c["params"] > 0


def test_tfidf_features(text_store):
    task = task_for(text_store)
    f = task.features(components=8)
    assert f.shape == (len(task), 8) and f.dtype == np.float32 and np.isfinite(f).all()
    np.testing.assert_array_equal(f, task.features(components=8))  # seeded
    # the first components separate the classes: a nearest-centroid rule beats chance well
    y = task.labels
    centroids = np.stack([f[y == c].mean(0) for c in range(3)])
    pred = np.argmin(((f[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == y).mean() > 0.6


def test_grouping_by_length_covers_every_id_and_pads_less(text_store):
    from selectkit.nodes.sampler import IdBatchSampler

    lengths = text_store.train.lengths()
    ids = np.arange(len(lengths))
    s = IdBatchSampler(ids, 16, seed=3, lengths=lengths, group=4)
    s.reset()
    batches = [b["ids"] for b in s]
    assert sorted(np.concatenate(batches).tolist()) == ids.tolist()
    assert all(len(b) == 16 for b in batches[:-1])
    plain = IdBatchSampler(ids, 16, seed=3)
    plain.reset()
    width = lambda bs: np.mean([lengths[b].max() for b in bs])  # noqa: E731
    assert width(batches) < width([b["ids"] for b in plain])
    again = IdBatchSampler(ids, 16, seed=3, lengths=lengths, group=4)
    again.reset({"epoch": 0, "index": 2, "shard": [0, 1]})  # resume mid-epoch: the same batches
    assert [b["ids"].tolist() for b in again] == [b.tolist() for b in batches[2:]]
    with pytest.raises(ValueError, match="group_by_length"):
        IdBatchSampler(ids, 16, group=4)


def _text_stacks():
    stacks = {"traditional": {}}
    for m in METHODS.values():
        if m.slot != "stages":  # SVP runs as stages: its subset is trained on like any other
            stacks[m.name] = {m.name: m.example}
    return stacks


@pytest.mark.parametrize("label", sorted(_text_stacks()))
def test_every_method_trains_on_text(text_store, label, tmp_path):
    task = task_for(text_store)
    stack = {k: (example_params(k, task) if METHODS[k].make_example else v) for k, v in _text_stacks()[label].items()}
    if "autoassist" in stack:
        stack["autoassist"] = {**stack["autoassist"], "worker": "thread"}
    cfg = tiny_train_cfg(model={"name": "fasttext", "args": {"dim": 8, "buckets": 64}}, methods=stack, epochs=2,
                         input={"batch_size": 16, "group_by_length": 2})
    r = Trainer(text_store, cfg).fit()
    assert 0 < r.metrics["examples_backpropagated"] <= 2 * len(task)
    assert np.isfinite(r.metrics["final_test_error"])


def test_svp_scores_on_text_are_in_id_order(text_store):
    from selectkit.methods.svp.artifacts import score_store

    task = task_for(text_store)
    model = Trainer(text_store, tiny_train_cfg(model={"name": "fasttext", "args": {}}, epochs=1)).model.eval()
    scores = score_store(model, task, torch.device("cpu"), batch_size=7, embeddings=True)
    with torch.no_grad():
        load = task.loader()
        b = load({"ids": np.arange(len(task)), "epoch": 0, "index": 0})
        (t, m), y = task.to_device(b, torch.device("cpu"))
        loss = torch.nn.functional.cross_entropy(model(t, m), y, reduction="none").numpy()
    np.testing.assert_allclose(scores["loss"], loss, rtol=1e-4, atol=1e-5)
    assert scores["embeddings"].shape == (len(task), 32)


# ---------------------------------------------------------------------------- bad input
def test_empty_texts_dropped_and_counted_or_rejected(make_text, tmp_path):
    rows = text_rows(60) + [("   ", "food"), ("", "tool")]
    p = make_text(rows=rows)
    meta = prepare(_cfg(p), tmp_path / "s")
    assert meta["dropped_empty"] == {"all": 2}
    assert meta["splits"]["train"]["size"] + meta["splits"]["test"]["size"] == 60
    with pytest.raises(UsageError, match=r"rows \[60, 61\].*data.empty: drop"):
        prepare(_cfg(p, empty="error"), tmp_path / "t")


def test_missing_and_unknown_labels(make_text, tmp_path):
    p = make_text(rows=text_rows(30) + [("a dog with a tail", None)])
    with pytest.raises(UsageError, match=r"rows \[30\].*no label"):
        prepare(_cfg(p), tmp_path / "s")
    train, test = make_text(30), make_text(rows=[("a hammer", "tool"), ("a plane", "vehicle")], name="test.jsonl")
    with pytest.raises(UsageError, match=r"rows \[1\].*\['vehicle'\].*data.class_names"):
        prepare(_cfg(train, test_path=str(test)), tmp_path / "s")
    with pytest.raises(UsageError, match=r"labels \['animal'\] that are not classes \['food', 'tool'\]"):
        prepare(_cfg(train, class_names=["food", "tool"]), tmp_path / "s")


def test_file_in_another_encoding_is_named(make_text, tmp_path):
    p = make_text(rows=text_rows(20) + [("un café très sucré", "food")], encoding="latin-1", name="latin.jsonl")
    with pytest.raises(UsageError, match=r"line 21\) is not valid utf-8.*data.encoding"):
        prepare(_cfg(p), tmp_path / "s")
    meta = prepare(_cfg(p, encoding="latin-1"), tmp_path / "s")
    assert meta["splits"]["train"]["size"] + meta["splits"]["test"]["size"] == 21


def test_long_texts_truncated_and_counted_or_rejected(make_text, tmp_path):
    p = make_text(rows=text_rows(40) + [(" ".join(["dog"] * 50), "animal")])
    meta = prepare(_cfg(p, max_length=20), tmp_path / "s")
    s = Store(tmp_path / "s")
    assert meta["splits"]["train"]["truncated"] + meta["splits"]["test"]["truncated"] == 1
    assert max(s.train.lengths().max(), s.test.lengths().max()) == 20
    with pytest.raises(UsageError, match=r"longer than data.max_length=20 tokens \(the longest has 50\).*data.long"):
        prepare(_cfg(p, max_length=20, long="error"), tmp_path / "t")


def test_tokenizer_from_another_store_is_refused(make_text, tmp_path):
    a = prepare(_cfg(make_text(60)), tmp_path / "a")
    b = prepare(_cfg(make_text(60, seed=5)), tmp_path / "b")
    assert a["tokenizer"]["sha256"] != b["tokenizer"]["sha256"]
    (tmp_path / "b/tokenizer.json").write_bytes((tmp_path / "a/tokenizer.json").read_bytes())
    with pytest.raises(ValueError, match=rf"not the tokenizer.*store fingerprint {b['fingerprint']}"):
        Store(tmp_path / "b")
    # reusing another store's tokenizer on purpose: the vocabulary is shared, recorded, fingerprinted
    c = prepare(_cfg(make_text(60, seed=5), tokenizer=str(tmp_path / "a")), tmp_path / "c")
    assert c["tokenizer"]["sha256"] == a["tokenizer"]["sha256"] and c["tokenizer"]["source"].endswith("tokenizer.json")


def test_image_artifacts_with_the_text_store_fail_naming_both(text_store, digits_store, tmp_path):
    from selectkit.io import load_model
    from selectkit.methods.autoassist.features import read_features, write_features
    from selectkit.methods.svp.artifacts import write_scores

    text = task_for(text_store)
    write_features(tmp_path / "f", np.zeros((len(digits_store.train), 4), np.float32),
                   {"store_fingerprint": digits_store.fingerprint})
    with pytest.raises(ValueError, match=f"{digits_store.fingerprint}.*{text_store.fingerprint}"):
        read_features(tmp_path / "f", text)
    from selectkit.methods.autoassist.features import embedding_features

    from selectkit.methods.svp.artifacts import METRICS

    scores = {"ids": np.arange(5), "embeddings": np.zeros((5, 2), np.float32),
              **{m: np.zeros(5, np.float32) for m in METRICS}}
    write_scores(tmp_path / "s", scores, {"store_fingerprint": digits_store.fingerprint})
    with pytest.raises(UsageError, match=f"{digits_store.fingerprint}.*{text_store.fingerprint}"):
        embedding_features(tmp_path / "s", text)
    from selectkit.io import save_model

    tr = Trainer(digits_store, tiny_train_cfg(epochs=1))
    save_model(tmp_path / "run/model.pt", tr.model, model_sig=tr.model_sig, task=tr.task, config={})
    with pytest.raises(UsageError, match=f"store {digits_store.fingerprint} but the store is {text_store.fingerprint}"):
        load_model(tmp_path / "run", text)


def test_text_config_errors(make_text, tmp_path):
    with pytest.raises(ConfigError, match="data.long"):
        DataConfig(source="text", path="x.jsonl", long="cut")
    with pytest.raises(ConfigError, match="data.test_path"):
        DataConfig(source="wordnet", test_path="x.jsonl")
    p = make_text(20, name="texts.txt")
    with pytest.raises(UsageError, match="data.format"):
        prepare(_cfg(p), tmp_path / "s")
    with pytest.raises(UsageError, match="no key 'body'"):
        prepare(_cfg(make_text(20), text_column="body"), tmp_path / "s")
    prepare(_cfg(make_text(20)), tmp_path / "t")
    with pytest.raises(ValueError, match="no augmentation"):
        task_for(Store(tmp_path / "t")).loader("flip")


def test_failed_text_prepare_keeps_previous_store(make_text, tmp_path):
    good = make_text(40)
    prepare(_cfg(good), tmp_path / "s")
    before = (tmp_path / "s/meta.json").read_text()
    with pytest.raises(UsageError):
        prepare(_cfg(make_text(rows=[("", "a")] * 3, name="bad.jsonl"), empty="error"), tmp_path / "s")
    assert (tmp_path / "s/meta.json").read_text() == before


# ---------------------------------------------------------------------------- WordNet
def _fake_wordnet(d):
    d.mkdir()
    header = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    lines = {
        "data.noun": ["00001740 03 n 01 entity 0 000 | that which is perceived or known  \n",
                      "01320032 05 n 01 dog 0 000 | a member of the genus Canis; \"the dog barked\"  \n",
                      "07679356 13 n 01 café_au_lait 0 000 | coffee with milk; café au lait  \n"],
        "data.verb": ["01835496 38 v 01 walk 0 000 01 + 02 00 | use one's feet to advance  \n"],
        "data.adj": ["00001740 00 a 01 able 0 000 | (usually followed by `to') having the necessary means  \n"],
        "data.adv": ["00001837 02 r 01 barely 0 000 | only a very short time before  \n"],
    }
    for name, ls in lines.items():
        (d / name).write_bytes((header + "".join(ls)).encode("latin-1"))
    return d


def test_wordnet_source_reads_glosses_and_lexnames(tmp_path):
    d = _fake_wordnet(tmp_path / "wn")
    texts, labels, _ = read_wordnet(DataConfig(source="wordnet", path=str(d)))
    assert labels == [3, 5, 13, 38, 0, 2]
    assert texts[1] == 'a member of the genus Canis; "the dog barked"' and texts[2] == "coffee with milk; café au lait"
    assert LEXNAMES[5] == "noun.animal" and LEXNAMES[38] == "verb.motion" and len(LEXNAMES) == 45
    (d / "data.adv").unlink()
    with pytest.raises(FileNotFoundError, match="data.adv.*apt-get install wordnet-base"):
        prepare(DataConfig(source="wordnet", path=str(d)), tmp_path / "s")


@pytest.mark.skipif(not (__import__("pathlib").Path(WORDNET) / "data.noun").is_file(),
                    reason="Debian's wordnet-base is not installed (`make data` installs it)")
def test_wordnet_counts():
    texts, labels, _ = read_wordnet(DataConfig(source="wordnet"))
    counts = np.bincount(labels, minlength=45)
    assert len(texts) == 117_659 and len(counts) == 45 and counts.min() == 42 and counts.max() == 14_435


def test_reviewed_edge_cases(make_text, tmp_path):
    # a JSON string holding U+2028 and a CSV field holding a newline stay one record each
    rows = text_rows(30) + [("a dog\u2028with a tail", "animal")]
    meta = prepare(_cfg(make_text(rows=rows)), tmp_path / "j")
    assert meta["splits"]["train"]["size"] + meta["splits"]["test"]["size"] == 31
    p = make_text(rows=text_rows(30) + [("a saw\nwith a blade", "tool")], fmt="csv")
    meta = prepare(_cfg(p), tmp_path / "c")
    assert meta["splits"]["train"]["size"] + meta["splits"]["test"]["size"] == 31
    # a byte-order mark before the CSV header
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    prepare(_cfg(bom), tmp_path / "b")
    # one class only: named before any training
    with pytest.raises(UsageError, match="at least 2 classes.*data.label_column"):
        prepare(_cfg(make_text(rows=[(t, "food") for t, _ in text_rows(20)], name="one.jsonl")), tmp_path / "o")
    # a misnamed label column is named as such
    with pytest.raises(UsageError, match="no key 'topic'.*data.label_column"):
        prepare(_cfg(make_text(20), label_column="topic"), tmp_path / "l")
    # an empty text without a label is dropped, not reported as a missing label
    meta = prepare(_cfg(make_text(rows=text_rows(30) + [("", None)], name="e.jsonl")), tmp_path / "e")
    assert meta["dropped_empty"] == {"all": 1}
    # a bad suffix of the test file names data.test_path
    with pytest.raises(UsageError, match="data.test_path="):
        prepare(_cfg(make_text(30), test_path=str(make_text(10, seed=3, name="test.txt"))), tmp_path / "t")


def test_model_positions_cover_the_longest_test_text(make_text, tmp_path):
    train = make_text(rows=text_rows(40, max_words=8), name="train.jsonl")
    test = make_text(rows=[(" ".join(["dog"] * 30), "animal"), ("a hammer", "tool"), ("bread", "food")],
                     name="test.jsonl")
    prepare(_cfg(train, test_path=str(test)), tmp_path / "s")
    store = Store(tmp_path / "s")
    task = task_for(store)
    assert task.spec.max_length == 30 > store.train.lengths().max()
    cfg = tiny_train_cfg(model={"name": "transformer", "args": {"dim": 8, "heads": 2, "ff": 8}}, epochs=1,
                         input={"batch_size": 16})
    assert np.isfinite(Trainer(store, cfg).fit().metrics["final_test_error"])
