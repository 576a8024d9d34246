"""The data module on real text: Python's standard library (sources, docs) and files the tests write.
Covers every source type, every mixing strategy, both packing modes, the token store, resume, rank sharding and bad input."""
import json, math, shutil, sysconfig, warnings
from pathlib import Path
import numpy as np
import pytest

from forge_nb.config import PipelineConfig, DataConfig, SourceConfig, MixStageConfig, TokenizerConfig, ConfigError, validate_config
from forge_nb.data.sources import iter_documents, SourceStats, DataError
from forge_nb.data.tokenizer import train_tokenizer, load_tokenizer, encode_documents, token_dtype
from forge_nb.data.mixing import plan_mix, mix_order, prefix_share_error, mix_weights, unimax_weights
from forge_nb.data.packing import pack_bfd, pack_concat, packing_report
from forge_nb.data.store import run_data_stage, TokenStore

STDLIB = Path(sysconfig.get_paths()["stdlib"])
QUIET = lambda *a: None

def stdlib_blocks(lines_per_doc: int, max_docs: int, skip: int = 0, pattern: str = "*.py"):
    "Real text: consecutive blocks of `lines_per_doc` non-empty lines of the standard library's modules."
    out, buf = [], []
    for f in sorted(STDLIB.glob(pattern))[skip:]:
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip(): continue
            buf.append(line)
            if len(buf) == lines_per_doc:
                out.append("\n".join(buf)); buf = []
                if len(out) >= max_docs: return out
    return out

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three real-text sources whose mean document lengths differ ~10× each: single lines, 10-line and 100-line blocks.
    The 100-line blocks come from the packages, the others from the top-level modules: no two sources hold the same
    run of lines, so a document's tokens tell which source it came from (the share recount relies on it)."""
    d = tmp_path_factory.mktemp("corpus")
    srcs = {"lines": stdlib_blocks(1, 40_000), "blocks": stdlib_blocks(10, 6_000, skip=20),
            "files": stdlib_blocks(100, 800, pattern="*/*.py")}
    for name, docs in srcs.items():
        (d/f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return d, srcs

@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    d, srcs = corpus
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(srcs["blocks"][:2000] + srcs["lines"][:5000], out, vocab_size=1024)
    return out

def sources(d, names=("lines", "blocks", "files")):
    return [SourceConfig(name=n, path=str(d/f"{n}.jsonl")) for n in names]

# ---------------------------------------------------------------- sources

def test_every_source_type(tmp_path):
    import pyarrow as pa, pyarrow.parquet as pq
    from datasets import Dataset
    texts = stdlib_blocks(5, 50)
    (tmp_path/"a.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    pq.write_table(pa.table({"body": texts}), tmp_path/"a.parquet")
    import csv
    with open(tmp_path/"a.csv", "w", newline="") as f:
        w = csv.writer(f); w.writerow(["id", "body"]); w.writerows([[i, t] for i, t in enumerate(texts)])
    (tmp_path/"txt"/"sub").mkdir(parents=True)
    for i, t in enumerate(texts): (tmp_path/"txt"/("sub" if i % 2 else "")/f"{i:03d}.txt").write_text(t)
    Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path/"hf"))
    for kind, path in [("jsonl", "a.jsonl"), ("parquet", "a.parquet"), ("csv", "a.csv"), ("hf_disk", "hf")]:
        for k in (kind, "auto"):
            got = list(iter_documents(SourceConfig(name="s", path=str(tmp_path/path), text_field="body", kind=k)))
            assert got == texts, (kind, k)
    folder = list(iter_documents(SourceConfig(name="s", path=str(tmp_path/"txt"))))
    assert sorted(folder) == sorted(texts)
    glob = list(iter_documents(SourceConfig(name="s", path=str(tmp_path/"txt"/"**"/"*.txt"))))
    assert sorted(glob) == sorted(texts)
    # real files every machine with Python has
    assert len(list(iter_documents(SourceConfig(name="json", path=str(STDLIB/"json"))))) >= 4

def test_filters_and_dedup(tmp_path):
    texts = stdlib_blocks(3, 200)
    (tmp_path/"d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts + texts[:50]))
    st = SourceStats()
    docs = list(iter_documents(SourceConfig(name="d", path=str(tmp_path/"d.jsonl"), min_chars=40, max_chars=200), st))
    assert all(40 <= len(t) <= 200 for t in docs)
    assert st.duplicates > 0 and st.too_short + st.too_long > 0
    assert st.docs + st.duplicates + st.too_short + st.too_long == 250
    st2 = SourceStats()
    assert len(list(iter_documents(SourceConfig(name="d", path=str(tmp_path/"d.jsonl"), dedup=False), st2))) == 250

def test_jsonl_fast_path_matches_exact_reader(tmp_path, monkeypatch):
    """Arrow's reader gives exactly the exact reader's documents (unicode, escapes, gzip, blank lines), is the one used on a
    clean file, and hands over at an anomaly deep in a file with the right line number."""
    import gzip
    import forge_nb.data.sources as S
    texts = [t + (" é ✓ \t\u2028 \"q\"" if i % 7 == 0 else "") for i, t in enumerate(stdlib_blocks(4, 3000))]
    body = "".join(json.dumps({"text": t, "n": i}) + ("\n\n" if i % 500 == 0 else "\n") for i, t in enumerate(texts))
    (tmp_path/"a.jsonl").write_text(body)
    with gzip.open(tmp_path/"b.jsonl.gz", "wt", encoding="utf-8") as f: f.write(body)
    src = lambda p, **k: SourceConfig(name="s", path=str(tmp_path/p), dedup=False, **k)
    exact = [t for t, _ in S.read_jsonl(src("a.jsonl"), tmp_path/"a.jsonl", SourceStats())]
    assert exact == texts
    def no_exact(*a, **k): raise AssertionError("the exact reader was used on a clean file")
    monkeypatch.setattr(S, "read_jsonl", no_exact)
    assert list(iter_documents(src("a.jsonl"))) == texts
    assert list(iter_documents(src("b.jsonl.gz"))) == texts
    monkeypatch.undo()
    lines = body.splitlines(keepends=True); bad_line = len(lines) - 3           # a missing field near the end
    (tmp_path/"c.jsonl").write_text("".join(lines[:bad_line - 1]) + '{"body": "x"}\n' + "".join(lines[bad_line - 1:]))
    fast = S.read_jsonl_fast
    small = lambda *a, **k: fast(*a, **{**k, "block_size": 1 << 16})   # many blocks: the anomaly is far from the start
    monkeypatch.setattr(S, "read_jsonl_fast", small)
    with pytest.raises(DataError, match=rf"c.jsonl:{bad_line}: missing text field 'text'"): list(iter_documents(src("c.jsonl")))
    st = SourceStats()
    assert list(iter_documents(src("c.jsonl", on_bad_record="skip"), st)) == texts and st.bad_records == 1

def test_bad_input_names_file_line_and_field(tmp_path, bad_input):
    f = tmp_path/"bad.jsonl"
    f.write_text('{"text": "a fine document"}\n{"text": "broken\n{"content": "no text field"}\n{"text": 3}\n{"text": "another"}\n')
    with pytest.raises(DataError, match=rf"{f}:2: malformed JSON") as e: list(iter_documents(SourceConfig(name="b", path=str(f))))
    bad_input("data", "a JSONL line that is not JSON", e, names=[f"{f}:2", "malformed JSON"])
    st = SourceStats()
    assert list(iter_documents(SourceConfig(name="b", path=str(f), on_bad_record="skip"), st)) == ["a fine document", "another"]
    assert st.bad_records == 3
    f.write_text('{"text": "ok"}\n{"content": "x"}\n')
    with pytest.raises(DataError, match=rf"{f}:2: missing text field 'text'") as e: list(iter_documents(SourceConfig(name="b", path=str(f))))
    bad_input("data", "a JSONL record without the text field", e, names=[f"{f}:2", "'text'"])
    f.write_text("\n\n")
    with pytest.raises(DataError, match="source 'b' .* is empty") as e: list(iter_documents(SourceConfig(name="b", path=str(f))))
    bad_input("inputs", "a JSONL source of blank lines", e, names=["source 'b'", str(f), "empty"])
    with pytest.raises(DataError, match="does not exist") as e: list(iter_documents(SourceConfig(name="b", path=str(tmp_path/"nope.jsonl"))))
    bad_input("inputs", "a source path that does not exist", e, names=["nope.jsonl"])
    with pytest.raises(DataError, match="no files match") as e: list(iter_documents(SourceConfig(name="b", path=str(tmp_path/"*.parquet"))))
    bad_input("inputs", "a source glob that matches no file", e, names=["*.parquet"])
    # weights: the config rejects negative ones and a wrong count, naming the field
    srcs = [{"name": "a", "path": "a"}, {"name": "b", "path": "b"}]
    with pytest.raises(ConfigError, match="data.weights: expected 2 weights"):
        validate_config(PipelineConfig, {"data": {"sources": srcs, "strategy": "static", "weights": [1, 2, 3]}})
    with pytest.raises(ConfigError, match="data.weights: must be finite and >= 0") as e:
        validate_config(PipelineConfig, {"data": {"sources": srcs, "strategy": "static", "weights": [1, -1]}})
    bad_input("config", "a negative mixing weight", e, names=["data.weights"])

def test_bad_input_stops_the_data_stage_without_a_half_store(tmp_path):
    good = tmp_path/"good.jsonl"; good.write_text("".join(json.dumps({"text": t}) + "\n" for t in stdlib_blocks(4, 300)))
    bad = tmp_path/"bad.jsonl"; bad.write_text('{"text": "x"}\n{oops\n')
    cfg = PipelineConfig(name="r", runs_dir=str(tmp_path), stages=["data"], tokenizer={"vocab_size": 300, "train_bytes": 20000},
                         data=DataConfig(sources=[SourceConfig(name="g", path=str(good)), SourceConfig(name="b", path=str(bad))],
                                         strategy="static", weights=[1, 1], seq_len=32, val_docs=0))
    with pytest.raises(DataError, match=rf"{bad}:2: malformed JSON"): run_data_stage(cfg, tmp_path/"r", log=QUIET)
    assert not (tmp_path/"r"/"data").exists()
    assert not [p for p in (tmp_path/"r").iterdir() if p.name.startswith(".data.tmp")]

def test_bad_bytes_follow_on_bad_record_and_reach_the_report(tmp_path, bad_input):
    """Invalid UTF-8 (a Latin-1 line) stops the data stage naming file and line, or with `on_bad_record: skip` is skipped;
    a binary file in a text folder is skipped; both counts are in the manifest and the mix report, recounted here."""
    docs = stdlib_blocks(4, 300)
    lat = tmp_path/"lat.jsonl"
    lines = [json.dumps({"text": t}).encode() + b"\n" for t in docs]
    bad_at = [5, 120]                                        # 1-based line numbers written as Latin-1
    for i in bad_at: lines[i - 1] = f'{{"text": "caf\u00e9 {i}"}}\n'.encode("latin-1")
    lat.write_bytes(b"".join(lines))
    (tmp_path/"txt").mkdir()
    for i, t in enumerate(docs[:40]): (tmp_path/"txt"/f"{i:02d}.txt").write_text(t)
    (tmp_path/"txt"/"zz.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    def cfg(mode):
        return PipelineConfig(name=mode, runs_dir=str(tmp_path), stages=["data"], tokenizer={"vocab_size": 300, "train_bytes": 20000},
                              data=DataConfig(sources=[SourceConfig(name="lat", path=str(lat), on_bad_record=mode),
                                                       SourceConfig(name="txt", path=str(tmp_path/"txt"), on_bad_record=mode)],
                                              strategy="static", weights=[1, 1], seq_len=32, val_docs=0))
    with pytest.raises(DataError, match=rf"source 'lat': {lat}:{bad_at[0]}: not UTF-8 \(byte 0xe9") as e:
        run_data_stage(cfg("error"), tmp_path/"error", log=QUIET)
    bad_input("data", "a Latin-1 line in a JSONL source (not UTF-8)", e, names=["source 'lat'", f"{lat}:{bad_at[0]}", "byte 0xe9"])
    logs = []
    run_data_stage(cfg("skip"), tmp_path/"skip", log=logs.append)
    m = json.loads((tmp_path/"skip"/"data"/"manifest.json").read_text())
    def utf8(b):
        try: return b.decode("utf-8")
        except UnicodeDecodeError: return None
    kept = [json.loads(l)["text"] for l in lines if utf8(l) is not None]        # recounted from the bytes written
    assert m["source_stats"]["lat"]["bad_utf8"] == len(lines) - len(kept) == len(bad_at)
    assert m["source_stats"]["lat"]["docs"] == len(set(kept)) and m["source_stats"]["txt"]["binary_files"] == 1
    assert m["source_stats"]["txt"]["docs"] == len(set(docs[:40])) and m["source_stats"]["txt"]["files"] == 41
    rep = json.loads((tmp_path/"skip"/"data"/"mix_report.json").read_text())["sources"]
    assert {r["source"]: (r["bad_utf8"], r["binary_files"]) for r in rep} == {"lat": (2, 0), "txt": (0, 1)}
    md = (tmp_path/"skip"/"data"/"mix_report.md").read_text()
    assert "## Sources" in md and "binary_files" in md
    assert any("tokenized lat" in l and "2 not UTF-8" in l for l in logs) and any("1 binary files" in l for l in logs)

# ---------------------------------------------------------------- tokenizer

def test_tokenizer_loads_offline_with_special_tokens(tokenizer):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert len(tok) == 1024
    text = (STDLIB/"this.py").read_text()
    assert tok.decode(tok(text).input_ids) == text
    assert "<|assistant|>" in tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True)
    ids, lens = encode_documents(tok, [text, "x"], tok.eos_token_id, token_dtype(len(tok)))
    assert ids.dtype == np.uint16 and lens.tolist() == [len(tok(text).input_ids) + 1, 2]
    assert token_dtype(70_000) == np.uint32

# ---------------------------------------------------------------- mixing

def real_lengths(corpus, tokenizer):
    d, srcs = corpus
    tok = load_tokenizer(tokenizer)
    return [encode_documents(tok, srcs[n], tok.eos_token_id)[1] for n in ("lines", "blocks", "files")]

def test_mean_lengths_differ_10x(corpus, tokenizer):
    m = [l.mean() for l in real_lengths(corpus, tokenizer)]
    assert m[1] / m[0] > 7 and m[2] / m[1] > 7, m

def test_token_shares_track_targets(corpus, tokenizer):
    d, _ = corpus
    lengths = real_lengths(corpus, tokenizer)
    cfg = DataConfig(sources=sources(d), strategy="static", weights=[0.5, 0.3, 0.2], max_epochs=100)
    plan = plan_mix(cfg, [l.sum() for l in lengths], total_tokens=int(sum(l.sum() for l in lengths) * 1.5))
    order = mix_order(plan, lengths, seed=0)
    assert len(order.source) > 10_000
    e10k = prefix_share_error(order, lengths, plan.weights[0], 10_000)
    e_end = prefix_share_error(order, lengths, plan.weights[0], len(order.source))
    assert e10k < 0.5, e10k
    assert e_end < 0.1, e_end
    # the document-probability baseline (interleave_datasets semantics) is far off on the same data
    doc_p = np.array([0.5, 0.3, 0.2]); mean = np.array([l.mean() for l in lengths])
    assert np.abs(doc_p * mean / (doc_p * mean).sum() - doc_p).max() > 0.2

def test_every_strategy_and_infeasible_plans(corpus, tokenizer):
    d, _ = corpus
    lengths = real_lengths(corpus, tokenizer); sizes = [int(l.sum()) for l in lengths]
    total = sum(sizes)
    st = plan_mix(DataConfig(sources=sources(d), strategy="static", weights=[2, 1, 1]), sizes, total)
    assert np.allclose(st.weights[0], [0.5, 0.25, 0.25])
    ex = plan_mix(DataConfig(sources=sources(d), strategy="external", weights=[0.2, 0.5, 0.3]), sizes, total)
    assert np.allclose(ex.weights[0], [0.2, 0.5, 0.3])
    t1 = plan_mix(DataConfig(sources=sources(d), strategy="temperature", temperature=1.0), sizes, total)
    assert np.allclose(t1.weights[0], np.array(sizes) / total) and np.allclose(t1.epochs, 1)
    t5 = plan_mix(DataConfig(sources=sources(d), strategy="temperature", temperature=5.0, max_epochs=10), sizes, total)
    small = int(np.argmin(sizes))
    assert t5.weights[0, small] > t1.weights[0, small]
    um = plan_mix(DataConfig(sources=sources(d), strategy="unimax", max_epochs=1.0), sizes, int(total * 0.9))
    assert um.epochs.max() <= 1 + 1e-9 and abs(um.targets.sum() - int(total * 0.9)) < 1
    with pytest.raises(DataError, match="exceeds what the epoch caps allow"):
        plan_mix(DataConfig(sources=sources(d), strategy="unimax", max_epochs=1.0), sizes, total * 2)
    with pytest.raises(DataError, match=r"source '\w+' would be read [\d.]+ times .* over its cap max_epochs=2"):
        plan_mix(DataConfig(sources=sources(d), strategy="static", weights=[1, 1, 1], max_epochs=2), sizes, total * 5)
    table = st.table()
    assert [r["source"] for r in table] == ["lines", "blocks", "files"] and all("epochs" in r for r in table)
    assert "| source |" in st.markdown()

def test_per_source_epoch_cap_overrides_mix_cap(corpus, tokenizer):
    d, _ = corpus
    sizes = [int(l.sum()) for l in real_lengths(corpus, tokenizer)]
    srcs = sources(d); srcs[2] = SourceConfig(name="files", path=srcs[2].path, max_epochs=0.5)
    with pytest.raises(DataError, match="source 'files' .* max_epochs=0.5"):
        plan_mix(DataConfig(sources=srcs, strategy="static", weights=[1, 1, 1]), sizes, sizes[2] * 2)

# ---------------------------------------------------------------- packing

def test_best_fit_fill_and_no_truncation_of_fitting_docs(corpus, tokenizer):
    d, _ = corpus
    lengths = real_lengths(corpus, tokenizer)
    cfg = DataConfig(sources=sources(d), strategy="static", weights=[0.3, 0.4, 0.3], max_epochs=100)
    plan = plan_mix(cfg, [l.sum() for l in lengths], total_tokens=1_500_000)
    order = mix_order(plan, lengths)
    off = np.cumsum([0] + [len(l) for l in lengths])[:-1]
    doc_len = np.concatenate(lengths)[off[order.source] + order.doc]
    for T in (512, 2048):
        lay = pack_bfd(doc_len, T, window=2048).check(doc_len)
        rep = packing_report(lay, doc_len, order.source, ["lines", "blocks", "files"])
        assert lay.fill >= 0.995, (T, lay.fill)
        assert all(r["split_fitting"] == 0 for r in rep)
        assert rep[-1]["split_long"] == int((doc_len > T).sum())
        cat = pack_concat(doc_len, T).check(doc_len)
        assert cat.fill > 0.999 and packing_report(cat, doc_len, order.source, ["a", "b", "c"])[-1]["split_fitting"] > 0

# ---------------------------------------------------------------- the store

def store_cfg(tmp_path, d, tokenizer=None, **data):
    base = dict(sources=sources(d), strategy="static", weights=[0.4, 0.4, 0.2], seq_len=128, val_docs=8, max_epochs=20,
                total_tokens=200_000, shard_tokens=128 * 300)
    base.update(data)
    return PipelineConfig(name="s", runs_dir=str(tmp_path), stages=["data"], data=DataConfig(**base),
                          tokenizer=TokenizerConfig(path=str(tokenizer)) if tokenizer else TokenizerConfig(vocab_size=512, train_bytes=200_000))

# ---------------------------------------------------------------- recounting shares from the written shards

def source_keys(tokenizer_path, texts_by_source: dict, seq_len: int) -> dict:
    """Token sequences of every document of every source, tokenized here with transformers (not the store's code),
    each followed by eos -> the source's index. Also the pieces best-fit packing may cut a document longer than a
    sequence into (`seq_len`-token slices and the rest). A sequence found in two sources maps to -1 (ambiguous)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
    keys = {}
    def add(k, i): keys[k] = i if keys.get(k, i) == i else -1
    for i, texts in enumerate(texts_by_source.values()):
        for ids in tok(list(texts), add_special_tokens=False)["input_ids"]:
            a = np.asarray(ids + [tok.eos_token_id], np.int64)
            add(a.tobytes(), i)
            if len(a) > seq_len:
                for c in range(0, len(a), seq_len): add(a[c:c + seq_len].tobytes(), i)
    return keys

def recount_tokens(store: TokenStore, keys: dict) -> tuple:
    """Training tokens per [curriculum stage, source], recounted from the shards on disk: every non-pad token of every
    row is attributed to the source whose document it belongs to, by content. Concatenation: a stage's rows in order
    are its documents end to end (split after each eos). Best-fit: a row's pieces start where its positions restart at
    0; each is a whole document or a piece of a long one. A piece found in no source fails the test; one found in two
    (the same lines in two sources: rare, see `corpus`) is counted apart. Returns (tokens, ambiguous tokens) per stage."""
    m = store.manifest; S = len(m["sources"]); eos = m["tokenizer"]["eos_id"]
    rows = store._rows()
    out = np.zeros((len(m["train"]["stages"]), S), np.int64); amb = np.zeros(len(out), np.int64)
    def attribute(k, piece):
        src = keys.get(np.asarray(piece, np.int64).tobytes())
        assert src is not None, f"stage {k}: a piece of {len(piece)} tokens is no document (or piece of one) of any source"
        if src < 0: amb[k] += len(piece)
        else: out[k, src] += len(piece)
    for k, st in enumerate(m["train"]["stages"]):
        ids, pos, used = rows.get(np.arange(st["first_sequence"], st["first_sequence"] + st["sequences"]))
        if m["packing"] == "concat":
            stream = np.concatenate([r[:u] for r, u in zip(ids, used)]).astype(np.int64)
            ends = np.flatnonzero(stream == eos) + 1
            assert len(stream) == 0 or ends[-1] == len(stream), f"stage {k} does not end on a document boundary"
            for piece in np.split(stream, ends[:-1]): attribute(k, piece)
        else:
            for r, p, u in zip(ids, pos, used):
                starts = np.flatnonzero(p[:u] == 0)
                for piece in np.split(r[:u], starts[1:]): attribute(k, piece)
    return out, amb

def assert_shares_recounted(store: TokenStore, keys: dict, plan: list, tol: float = 0.005) -> np.ndarray:
    """The token share per source and per stage recounted from the shards is within `tol` of the plan (`plan`: the
    weights per stage as configured, not as the store reports them), and equals the mixer's own tally exactly."""
    got, amb = recount_tokens(store, keys)
    assert got.sum() + amb.sum() == store.manifest["train"]["tokens"], (got.sum(), amb.sum(), store.manifest["train"]["tokens"])
    assert amb.sum() <= 1e-3 * got.sum(), f"{amb.sum()} of {got.sum()} tokens could be from two sources"
    share = got / got.sum(1, keepdims=True)
    plan = np.asarray(plan, float); plan = plan / plan.sum(1, keepdims=True)
    assert np.abs(share - plan).max() < tol, f"recounted shares {share.round(4).tolist()} vs plan {plan.round(4).tolist()}"
    tally = np.asarray(store.manifest["mix"]["realized_tokens"])
    assert (got <= tally).all() and (tally - got).sum(1).tolist() == amb.tolist(), (got.tolist(), amb.tolist(), tally.tolist())
    return share

@pytest.mark.parametrize("packing", ["bfd", "concat"])
def test_store_end_to_end(tmp_path, corpus, tokenizer, packing):
    d, srcs = corpus
    cfg = store_cfg(tmp_path, d, tokenizer, packing=packing,
                    stages=[MixStageConfig(start_fraction=0.7, weights=[0.1, 0.2, 0.7], name="anneal")])
    s = run_data_stage(cfg, tmp_path/"s", log=QUIET)
    store = TokenStore(tmp_path/"s")
    m = store.manifest
    assert store.vocab_size == 1024 and store.seq_len == 128 and store.sources == ["lines", "blocks", "files"]
    assert len(m["train"]["shards"]) > 1 and m["dtype"] == "uint16"
    assert np.load(store.path/"train"/f"tokens_{m['train']['shards'][0]['name']}.npy", mmap_mode="r").dtype == np.uint16
    # realized shares per stage, recounted from the tokens in the shards, are within 0.5 points of the configured plan
    # (and equal the mixer's tally in the manifest), and the report exists
    assert_shares_recounted(store, source_keys(store.tokenizer_path, srcs, 128), [[0.4, 0.4, 0.2], [0.1, 0.2, 0.7]])
    assert (tmp_path/"s"/"data"/"mix_report.md").exists() and (tmp_path/"s"/"data"/"mix_plan.svg").exists()
    for p in m["packing_report"]:
        if p["source"] != "all": assert "truncated_pct" in p
    if packing == "bfd": assert min(s["fill"]) > 0.99
    # every document boundary restarts position_ids; labels are -100 only on padding
    b = next(store.loader(micro_batch_size=4))
    assert ((b["labels"] == -100) == (b["attention_mask"] == 0)).all()
    padded = 0
    for src in store.val_sources:                      # padding exists (val sequences end padded) and is masked, ids stay < vocab
        for vb in store.val_loader(src, micro_batch_size=16):
            assert ((vb["labels"] == -100) == (vb["attention_mask"] == 0)).all()
            assert vb["labels"].max() < store.vocab_size and vb["input_ids"].max() < store.vocab_size
            padded += int((vb["labels"] == -100).sum())
    assert padded > 0
    last = store.loader(micro_batch_size=1); last.step = store.num_sequences() - 1
    lb = next(last); assert lb["labels"].min() >= -100 and lb["labels"].max() < store.vocab_size
    ids = b["input_ids"].numpy(); pos = b["position_ids"].numpy(); eos = m["tokenizer"]["eos_id"]
    after_eos = np.zeros_like(ids, bool); after_eos[:, 1:] = ids[:, :-1] == eos
    assert (pos[after_eos & (b["attention_mask"].numpy() == 1)] == 0).all()
    # the tokenizer in the store loads offline; val data and bytes per token per source
    from transformers import AutoTokenizer
    assert len(AutoTokenizer.from_pretrained(str(store.tokenizer_path), local_files_only=True)) == 1024
    assert set(store.val_bytes_per_token) == {"lines", "blocks", "files"}
    assert all(1 < v < 8 for v in store.val_bytes_per_token.values())
    vb = list(store.val_loader("files", micro_batch_size=3))
    assert sum(x["input_ids"].shape[0] for x in vb) == store.num_sequences("files")

def _train_tokens(folder, m):
    "Every non-pad training token, shard after shard, sequence after sequence."
    out = []
    for sh in m["train"]["shards"]:
        ids = np.load(folder/"train"/f"tokens_{sh['name']}.npy"); used = np.load(folder/"train"/f"lengths_{sh['name']}.npy")
        out += [row[:u] for row, u in zip(ids, used)]
    return np.concatenate(out)

@pytest.mark.parametrize("packing", ["bfd", "concat"])
def test_chunked_packing_keeps_every_document(tmp_path, corpus, tokenizer, packing, monkeypatch):
    """Packing a chunk of documents at a time (what bounds memory on a large corpus) keeps the mix order and every
    token: the same documents in the same order (concat: the identical token stream). What it costs is what
    data/14_store says: each chunk closes its own last sequences, at most one extra sequence per chunk (concatenation:
    the chunk's last, padded sequence; best-fit: the partly filled ones it closes), so the fill of a stage drops by at
    most (chunks - 1) / sequences."""
    import functools
    import forge_nb.data.store as S
    from forge_nb.data.store import build_store
    from forge_nb.data.mixing import MixStream
    d, _ = corpus
    cfg = store_cfg(tmp_path, d, tokenizer, packing=packing,
                    stages=[MixStageConfig(start_fraction=0.7, weights=[0.1, 0.2, 0.7], name="anneal")])
    # MixStream hands over blocks of up to 65,536 documents per source, and a chunk is whole blocks: with the default
    # blocks this corpus is one chunk per stage whatever chunk_docs is. Small blocks make chunks of ~300 documents.
    monkeypatch.setattr(S, "MixStream", functools.partial(MixStream, window_docs=40))
    whole = build_store(cfg, tmp_path/"whole", {}, log=QUIET)
    chunked = build_store(cfg, tmp_path/"chunked", {}, log=QUIET, chunk_docs=300)
    assert whole["mix"]["realized_tokens"] == chunked["mix"]["realized_tokens"]
    assert whole["train"]["tokens"] == chunked["train"]["tokens"]
    docs = [r["docs"] for r in whole["packing_report"] if r["source"] == "all"]
    assert docs[0] > 10 * 300                              # many chunks in the first stage
    assert [r["docs"] for r in whole["packing_report"]] == [r["docs"] for r in chunked["packing_report"]]
    a, b = _train_tokens(tmp_path/"whole", whole), _train_tokens(tmp_path/"chunked", chunked)
    if packing == "concat": assert np.array_equal(a, b)
    else: assert np.array_equal(np.bincount(a, minlength=1024), np.bincount(b, minlength=1024))
    assert chunked["train"]["sequences"] > whole["train"]["sequences"], "chunking took no effect (one chunk per stage)"
    for n, sw, sc in zip(docs, whole["train"]["stages"], chunked["train"]["stages"]):
        chunks = -(-n // 300)                              # chunks of at least 300 documents, the last one smaller
        assert sw["sequences"] <= sc["sequences"] <= sw["sequences"] + chunks - 1, (sc["name"], chunks, sw["sequences"], sc["sequences"])
        assert sw["fill"] - sc["fill"] <= (chunks - 1) / sw["sequences"] + 1e-12, (sw["fill"], sc["fill"], chunks)
    assert chunked["train"]["sequences"] == sum(s["sequences"] for s in chunked["train"]["shards"])

def test_store_reuse_and_rebuild(tmp_path, corpus, tokenizer):
    d, _ = corpus
    src = tmp_path/"lines.jsonl"; shutil.copy(d/"lines.jsonl", src)
    cfg = store_cfg(tmp_path, d, tokenizer)
    cfg.data.sources[0] = SourceConfig(name="lines", path=str(src))
    assert run_data_stage(cfg, tmp_path/"s", log=QUIET)["reused"] is False
    first = json.loads((tmp_path/"s"/"data"/"manifest.json").read_text())
    assert run_data_stage(cfg, tmp_path/"s", log=QUIET)["reused"] is True
    with open(src, "a") as f: f.write(json.dumps({"text": "a new line of text appended later"}) + "\n")
    assert run_data_stage(cfg, tmp_path/"s", log=QUIET)["reused"] is False
    assert json.loads((tmp_path/"s"/"data"/"manifest.json").read_text())["config_hash"] != first["config_hash"]
    assert first["inputs"]["lines"][0]["blake2b"]

def test_trained_tokenizer_store_and_every_strategy(tmp_path, corpus):
    d, srcs = corpus
    for strat, extra in [("temperature", {"temperature": 2.0}), ("unimax", {"max_epochs": 3}), ("external", {"weights": [0.2, 0.3, 0.5]})]:
        cfg = store_cfg(tmp_path, d, None, strategy=strat, **({"weights": None} | extra) if strat != "external" else extra)
        s = run_data_stage(cfg, tmp_path/strat, log=QUIET)
        store = TokenStore(tmp_path/strat)
        assert store.vocab_size == 512 and s["sequences"] == store.num_sequences()
        # the plan: the configured weights (external), else the strategy's formula computed here from the source sizes
        mix = store.manifest["mix"]
        sizes = np.asarray(mix["sizes"], float)
        keys = source_keys(store.tokenizer_path, srcs, 128)
        # the sizes are each source's training tokens: at most its documents' tokens (+ eos) counted here with transformers
        # (fewer: the held-out documents and what curation drops, e.g. exact duplicates), and most of them
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(store.tokenizer_path), local_files_only=True)
        for i, texts in enumerate(srcs.values()):
            n = sorted(len(ids) + 1 for ids in tok(list(texts), add_special_tokens=False)["input_ids"])
            assert sum(n) / 2 <= sizes[i] <= sum(n), (strat, i, sizes[i], sum(n))
        if strat == "temperature":                         # share ∝ size^(1/T)
            w = sizes ** (1 / 2.0); w = w / w.sum()
        elif strat == "unimax":                            # equal budget per source, capped at max_epochs × size, smallest first
            budget, left, w = float(mix["total_tokens"]), float(mix["total_tokens"]), np.zeros(3)
            for k, i in enumerate(np.argsort(sizes * 3, kind="stable")):
                w[i] = min(sizes[i] * 3, left / (3 - k)); left -= w[i]
            assert abs(w.sum() - budget) < 1e-6 * budget; w = w / w.sum()
        else: w = np.asarray(extra["weights"], float)
        assert np.allclose(mix["stages"][0]["weights"], w / w.sum(), atol=1e-9), (strat, mix["stages"][0]["weights"], w.tolist())
        assert_shares_recounted(store, keys, [w])

def test_infeasible_plan_fails_before_writing(tmp_path, corpus, tokenizer):
    d, _ = corpus
    cfg = store_cfg(tmp_path, d, tokenizer, max_epochs=1, total_tokens=50_000_000)
    with pytest.raises(DataError, match="infeasible mix plan"): run_data_stage(cfg, tmp_path/"s", log=QUIET)
    assert not (tmp_path/"s"/"data").exists()

# ---------------------------------------------------------------- loader: sharding and exact resume

@pytest.fixture(scope="module")
def store(tmp_path_factory, corpus, tokenizer):
    d, _ = corpus
    tmp = tmp_path_factory.mktemp("store")
    cfg = store_cfg(tmp, d, tokenizer, stages=[MixStageConfig(start_fraction=0.5, weights=[0.1, 0.1, 0.8], name="anneal")])
    run_data_stage(cfg, tmp/"s", log=QUIET)
    return TokenStore(tmp/"s")

def test_rank_sharding_disjoint_and_complete(store):
    N = store.num_sequences()
    for W, B in [(1, 4), (2, 4), (3, 5), (4, 2)]:
        lds = [store.loader(micro_batch_size=B, rank=r, world_size=W) for r in range(W)]
        steps = -(-2 * N // (W * B))                                   # two epochs, rounded up to whole global batches
        per_step = [[ld.indices(s) for ld in lds] for s in range(steps)]
        for rs in per_step:                                           # a step's ranks never share a sequence
            allr = np.concatenate(rs); assert len(np.unique(allr)) == len(allr), "two ranks got the same sequence"
        stream = np.concatenate([np.concatenate(rs) for rs in per_step])
        for e in (0, 1):                                              # each epoch: every sequence exactly once, none dropped
            assert (np.sort(stream[e * N:(e + 1) * N]) == np.arange(N)).all(), (W, B, e)
        if N % (W * B): assert (np.arange(steps) * W * B % N > N - W * B).any()   # a global batch spans an epoch's end

def test_exact_resume_across_stage_boundary(store):
    B = 4
    st = store.manifest["train"]["stages"]
    boundary = st[1]["first_sequence"] // B
    ref = store.loader(micro_batch_size=B)
    batches = [next(ref)["input_ids"].clone() for _ in range(boundary + 5)]
    ld = store.loader(micro_batch_size=B)
    for _ in range(boundary - 2): next(ld)
    state = json.loads(json.dumps(ld.state_dict()))                 # survives a checkpoint as JSON
    resumed = store.loader(micro_batch_size=B); resumed.load_state_dict(state)
    for i in range(boundary - 2, boundary + 5): assert (next(resumed)["input_ids"] == batches[i]).all()
    # start_step gives the same
    assert (next(store.loader(micro_batch_size=B, start_step=boundary + 1))["input_ids"] == batches[boundary + 1]).all()
    # beyond one epoch: a seeded permutation, still exactly resumable
    ld = store.loader(micro_batch_size=B, seed=3); e = ld.steps_per_epoch
    ld.step = e + 7; st8 = ld.state_dict(); x = next(ld)["input_ids"]
    ld2 = store.loader(micro_batch_size=B, seed=3); ld2.load_state_dict(st8)
    assert (next(ld2)["input_ids"] == x).all() and ld.epoch == 1

def test_reshard_exactly_or_refuse(store, bad_input):
    two = [store.loader(micro_batch_size=4, rank=r, world_size=2) for r in range(2)]
    for ld in two:
        for _ in range(6): next(ld)
    seen = set(np.concatenate([ld.indices(s) for ld in two for s in range(6)]).tolist())
    one = store.loader(micro_batch_size=4); one.load_state_dict(two[0].state_dict())       # 48 rows consumed = 12 steps of 4
    assert one.step == 12 and not (set(one.indices(12).tolist()) & seen)
    three = store.loader(micro_batch_size=5, rank=0, world_size=3)
    with pytest.raises(DataError, match="cannot resume exactly with 3 ranks") as e: three.load_state_dict(two[0].state_dict())
    bad_input("checkpoint", "resuming the data loader with a number of ranks its batches cannot be split over", e,
              names=["3 ranks", "saved with 2"])
    other = store.loader(micro_batch_size=4, seed=9)
    with pytest.raises(DataError, match="seed was 0"): other.load_state_dict(two[0].state_dict())

def test_stage_filter(store):
    ld = store.loader(micro_batch_size=1, stages=["anneal"])
    a = store.manifest["train"]["stages"][1]; lo, n = a["first_sequence"], a["sequences"]
    assert ld.N == n
    rows = np.concatenate([ld.indices(s) for s in range(n)])
    assert (np.sort(rows) == np.arange(lo, lo + n)).all()
    # the stage alone is shuffled exactly as inside the whole stream (the permutation is per stage)
    full = store.loader(micro_batch_size=1)
    assert (np.concatenate([full.indices(s) for s in range(lo, lo + n)]) == rows).all()
    assert (store.loader(micro_batch_size=1, stages=["anneal"], shuffle=False).indices(0) == [lo]).all()
    with pytest.raises(DataError, match="unknown stage 'nope'"): store.loader(stages=["nope"])

def epoch_rows(ld):
    "Every row a one-rank loader reads in epoch 0, in order."
    return np.concatenate([ld.indices(s) for s in range(ld.steps_per_epoch)])

def test_epoch0_shuffled_within_stages(store):
    B = 8
    stages = store.manifest["train"]["stages"]
    assert len(stages) == 2
    ld = store.loader(micro_batch_size=B, seed=0)
    order = epoch_rows(ld); used = len(order)
    # each stage's rows fill exactly the stage's slots (its step range), so the curriculum holds
    for sg in stages:
        lo, end = sg["first_sequence"], sg["first_sequence"] + sg["sequences"]; hi = min(end, used)
        got = order[lo:hi]                                            # (the last stage loses the epoch's remainder)
        assert ((got >= lo) & (got < end)).all() and len(np.unique(got)) == hi - lo, sg["name"]
        for s in range(-(-lo // B), hi // B):                         # steps wholly inside the stage read only its rows
            assert ((ld.indices(s) >= lo) & (ld.indices(s) < end)).all()
    # batches mix: neighbours in a batch are rarely neighbours in the store (pieces of one document, one source),
    # and a batch spans its stage rather than a small window; in the store's order it is the opposite
    def adjacency(ld):
        bs = np.stack([ld.indices(s) for s in range(ld.steps_per_epoch)])
        return (np.abs(np.diff(bs, axis=1)) == 1).mean(), np.median(bs.max(1) - bs.min(1))
    adj, span = adjacency(ld)
    adj_store, span_store = adjacency(store.loader(micro_batch_size=B, shuffle=False))
    assert adj < 0.02 and adj_store == 1.0, (adj, adj_store)
    assert span > min(s["sequences"] for s in stages) / 2 and span_store == B - 1, (span, span_store)
    # deterministic in the seed, and independent of ranks and batch size (so resharding stays exact)
    assert (epoch_rows(store.loader(micro_batch_size=B, seed=0)) == order).all()
    assert (epoch_rows(store.loader(micro_batch_size=B, seed=1)) != order).any()
    two = [store.loader(micro_batch_size=B // 2, rank=r, world_size=2) for r in range(2)]
    inter = np.concatenate([np.concatenate([two[0].indices(s), two[1].indices(s)]) for s in range(two[0].steps_per_epoch)])
    assert (inter == order[:len(inter)]).all()
    # later epochs: a seeded permutation of the whole stream, different from epoch 0
    N = store.num_sequences()
    e1 = np.concatenate([ld.indices(s) for s in range(-(-2 * N // B))])[N:2 * N]   # the epochs are laid end to end
    assert (np.sort(e1) == np.arange(N)).all() and (e1[:len(order)] != order).any()
    # the batch holds exactly the rows `indices` names (gathered across shards, in that order)
    rows = store._rows()
    assert len(store.manifest["train"]["shards"]) > 2
    spans = []
    for step in (0, 5, ld.steps_per_epoch - 1):
        ld.step = step; idx = ld.indices(step); batch = next(ld)
        spans.append(len(np.unique(np.searchsorted(rows.starts, idx, side="right"))))
        for i, r in enumerate(idx):
            ids, pos, used = rows.get(np.array([r]))
            assert (batch["input_ids"][i].numpy() == ids[0]).all() and (batch["position_ids"][i].numpy() == pos[0]).all()
            assert int(batch["attention_mask"][i].sum()) == int(used[0])
    assert max(spans) > 1                                             # some batch gathers rows from several shards

def test_resume_refuses_a_state_saved_in_another_epoch0_order(store):
    ld = store.loader(micro_batch_size=4); next(ld)
    old = ld.state_dict(); del old["order"]                          # saved before epoch 0 was shuffled: store order
    with pytest.raises(DataError, match="epoch 0 was read in 'store' order when saved"): store.loader(micro_batch_size=4).load_state_dict(old)
    kept = store.loader(micro_batch_size=4, shuffle=False); kept.load_state_dict(old)
    assert kept.step == 1 and (kept.indices(1) == np.arange(4, 8)).all()

# ---------------------------------------------------------------- the demo corpus

@pytest.mark.slow
def test_demo_data_stage(tmp_path):
    from forge_nb.demo import demo_config
    cfg = demo_config(runs_dir=str(tmp_path), overrides=["tokenizer.train_bytes=500000"])
    s = run_data_stage(cfg, tmp_path/"demo", log=QUIET)
    rep = tmp_path/"demo"/"data"/"mix_report.md"
    assert rep.exists() and "realized_share" in rep.read_text()
    assert json.loads((tmp_path/"demo"/"data"/"mix_report.json").read_text())["mix"]["sources"] == ["code", "reference", "docstrings"]
    for name, w in zip(["code", "reference", "docstrings"], cfg.data.weights): assert abs(s["shares"][name] - w) < 0.01
    assert min(s["fill"]) > 0.995
    store = TokenStore(tmp_path/"demo")
    assert store.num_sequences() * store.seq_len >= cfg.pretrain.steps * cfg.pretrain.micro_batch_size * cfg.data.seq_len

def test_parallel_tokenization_is_identical(tmp_path, corpus, tokenizer):
    from forge_nb.data.store import tokenize_sources
    d, _ = corpus
    tok = load_tokenizer(tokenizer)
    cfg = DataConfig(sources=sources(d), strategy="static", weights=[1, 1, 1])
    one = tokenize_sources(cfg, tok, tmp_path/"one.bin", workers=1, batch_docs=3000, log=QUIET)
    two = tokenize_sources(cfg, tok, tmp_path/"two.bin", workers=2, batch_docs=3000, log=QUIET)
    assert (tmp_path/"one.bin").read_bytes() == (tmp_path/"two.bin").read_bytes()
    for f in ("lengths", "nbytes", "offsets"): assert all((a == b).all() for a, b in zip(getattr(one, f), getattr(two, f)))
    toks = one.tokens                                   # each document's tokens start at its offset and end with eos
    for i in range(3):
        assert one.offsets[i][0] == (one.offsets[i - 1][-1] + one.lengths[i - 1][-1] if i else 0)
        assert (toks[one.offsets[i] + one.lengths[i].astype(np.int64) - 1] == tok.eos_token_id).all()
