"""The `curate` stage end to end: a mixed folder of files -> `forge-nb` -> curated JSONL sources -> the data stage
-> a few pretraining steps; skip/resume; `--strict`; 1 vs N shards byte-identical (locally and as a SLURM job array). Every check recounts from the files
written, not the stage's tallies."""
import json, os, subprocess, sys
from pathlib import Path

import pytest, yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
from forge_nb.config import PipelineConfig
from forge_nb.data.curate import PLANTED_PII, write_share


def _topics(n=30):
    import pydoc_data.topics as t
    items = sorted(t.topics.items())
    return [(k, v) for k, v in items if len(v.split()) > 80][:n]


@pytest.fixture
def job_env(tmp_path):
    "Environment for the `forge-nb` subprocesses: this checkout first on PYTHONPATH."
    return dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.fixture
def share(tmp_path):
    planted = write_share(tmp_path/"share", {"handbook": _topics(30)})
    return tmp_path/"share", planted


def _config(tmp_path, share_dir, **curate):
    cfg = {"name": "cur", "runs_dir": str(tmp_path/"runs"), "stages": ["curate", "data", "pretrain"],
           "curate": {"inputs": [{"name": "handbook", "path": str(share_dir/"handbook")}], "filters": {"min_words": 30}, **curate},
           "data": {"seq_len": 64, "val_docs": 2, "total_tokens": 20000, "max_epochs": 50},
           "tokenizer": {"vocab_size": 400, "train_bytes": 50000},
           "model": {"depth": 2, "aspect_ratio": 32, "head_dim": 32, "max_seq_len": 64},
           "pretrain": {"steps": 4, "micro_batch_size": 2, "log_every": 1, "eval_every": 4, "save_every": 4, "eval_batches": 1}}
    PipelineConfig(**cfg)                                   # valid
    p = tmp_path/"cfg.yaml"; p.write_text(yaml.safe_dump(cfg)); return p


def _run(args, env, timeout=600):
    return subprocess.run([str(BIN/"forge-nb"), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def _sources(run):
    return {p.stem: [json.loads(x) for x in p.read_text().splitlines()] for p in sorted((run/"curate"/"sources").glob("*.jsonl"))}


@pytest.mark.slow
def test_share_to_training_through_the_cli(tmp_path, share, job_env):
    share_dir, planted = share
    cfgp = _config(tmp_path, share_dir)
    r = _run(["run", str(cfgp), "--foreground"], job_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path/"runs"/"cur"
    docs = _sources(run)["handbook"]
    ids = [d["id"] for d in docs]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    # provenance on every document; the sha256 is the original file's
    import hashlib
    for d in docs:
        assert set(d) >= {"id", "domain", "path", "type", "sha256", "pages", "mtime", "text", "meta"}
        assert d["sha256"] == hashlib.sha256((share_dir/"handbook"/d["path"]).read_bytes()).hexdigest()
    assert {d["type"] for d in docs} >= {"pdf", "docx", "html", "eml", "md"}
    # every planted near-duplicate pair: exactly one of the two is kept
    for copy, orig in planted["near_duplicates"]:
        assert (copy in ids) != (orig in ids), (copy, orig)
    # broken files never become documents; the report lists each with the reason planted
    rep = json.loads((run/"curate"/"report.json").read_text())
    listed = {f"{f['domain']}/{f['path']}": f["reason"] for f in rep["failures"]}
    assert listed == planted["broken"], listed
    assert not set(planted["broken"]) & set(ids)
    # personal data: no planted value in any file of the run (sources, report, logs, token store)
    for f in run.rglob("*"):
        if f.is_file():
            b = f.read_bytes()
            assert not any(v.encode() in b for v in PLANTED_PII.values()), f
    # ...and each planted kind replaced where it stood: counted in the shards' documents, before boilerplate removal (the
    # same redacted contact line in many documents is boilerplate, so the curated sources may have dropped it)
    shard_docs = "".join(p.read_text() for p in (run/"curate"/"shards").glob("*/docs.jsonl"))
    assert all(shard_docs.count(f"<{kind}>") >= 1 for kind in PLANTED_PII), shard_docs[:2000]
    # the data stage mixed the curated source; pretraining ran
    man = json.loads((run/"data"/"manifest.json").read_text())
    assert [r["source"] for r in man["mix"]["table"]] == ["handbook"]
    assert (run/"pretrain"/"final"/"config.json").exists()
    # the report shows the funnel, every failed file with its reason, and no planted personal value
    page = (run/"report.html").read_text()
    assert "curation funnel" in page and all(p.split("/", 1)[1] in page for p in planted["broken"])
    assert not any(v in page for v in PLANTED_PII.values())
    # the same command again: every stage skipped
    r = _run(["run", str(cfgp), "--foreground"], job_env)
    assert r.returncode == 0 and all(f"[{s}] skipped" in r.stdout for s in ("curate", "data", "pretrain")), r.stdout[-2000:]


@pytest.mark.slow
def test_curate_verb_as_a_job_with_progress_and_strict(tmp_path, share, job_env):
    share_dir, planted = share
    cfgp = _config(tmp_path, share_dir, shards=3, workers=2)
    r = _run(["curate", str(cfgp)], job_env)        # through the local launcher (a job), waiting
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[curate]" in r.stdout and "files/s" in r.stdout, r.stdout     # progress: files, bytes, rate
    run = tmp_path/"runs"/"cur"
    assert sorted(p.name for p in (run/"curate"/"shards").iterdir()) == ["00000", "00001", "00002"]
    # strict: the same inputs fail the stage, with one line naming a failed file and the report
    r = _run(["curate", str(cfgp), "--foreground", "--strict"], job_env)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert any("curate.strict" in x and "failed" in x for x in err), r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_one_shard_or_many_same_bytes_and_resume(tmp_path, share):
    "Phase 1 in 1 shard, or 4 shards over 2 workers, or 4 shards with 2 killed and redone: the same curated bytes."
    from forge_nb.data.curate import run_curate, shard_dir
    share_dir, _ = share
    out = {}
    for name, shards, workers in [("one", 1, 1), ("four", 4, 2)]:
        cfg = PipelineConfig(name=name, runs_dir=str(tmp_path/"runs"), curate={
            "inputs": [{"name": "handbook", "path": str(share_dir/"handbook")}], "shards": shards, "workers": workers, "filters": {"min_words": 30}})
        run_curate(cfg, tmp_path/"runs"/name, log=lambda *a: None)
        out[name] = {p.name: p.read_bytes() for p in (tmp_path/"runs"/name/"curate"/"sources").glob("*.jsonl")}
    assert out["one"] == out["four"] and out["one"]["handbook.jsonl"]
    # a run killed after two shards: the finished ones are kept, the others done, the output the same
    import shutil
    run = tmp_path/"runs"/"four"
    done = {i: (shard_dir(run, i)/"COMPLETE").stat().st_mtime_ns for i in (0, 1)}
    for i in (2, 3): shutil.rmtree(shard_dir(run, i))
    shutil.rmtree(run/"curate"/"sources")
    run_curate(cfg, run, log=lambda *a: None)
    assert {i: (shard_dir(run, i)/"COMPLETE").stat().st_mtime_ns for i in (0, 1)} == done
    assert {p.name: p.read_bytes() for p in (run/"curate"/"sources").glob("*.jsonl")} == out["one"]


# ---------------------------------------------------------------- bad input: each counted and listed, none stops the run

GOOD = "The team writes the travel policy for the staff, and the policy is read by everyone who books a trip for work. " * 3


def _encrypted_pdf():
    from fpdf import FPDF
    pdf = FPDF(); pdf.add_page(); pdf.set_font("helvetica", size=11); pdf.multi_cell(0, 6, GOOD)
    pdf.set_encryption(owner_password="owner", user_password="secret")
    return bytes(pdf.output())


def _truncated_docx():
    import io, docx
    d = docx.Document(); d.add_paragraph(GOOD); b = io.BytesIO(); d.save(b); return b.getvalue()[:900]


BAD_FILES = [  # (what the user did, file name, bytes or a link target, the reason listed)
    ("an encrypted PDF in the share", "locked.pdf", _encrypted_pdf, "encrypted"),
    ("a corrupt PDF in the share", "cut.pdf", lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog", "corrupt"),
    ("a scanned PDF (no text layer) in the share", "scan.pdf", lambda: __import__("forge_nb.data.curate").data.curate.text_pdf(""), "scanned"),
    ("a truncated Word file in the share", "cut.docx", _truncated_docx, "corrupt"),
    ("a zero-byte file in the share", "empty.md", lambda: b"", "empty_file"),
    ("a file of an unknown type in the share", "tool.exe", lambda: b"MZ\x90\x00", "unknown_type"),
    ("a file over the size cap in the share", "huge.txt", lambda: b"word " * 2000, "too_large"),
    ("a broken symbolic link in the share", "gone.md", ("link", "nowhere.md"), "unreadable"),
    ("a symbolic link loop in the share", "loop", ("link", "."), "symlink_loop"),
]


@pytest.mark.parametrize("did,name,make,reason", BAD_FILES, ids=[b[3] + "-" + b[1] for b in BAD_FILES])
def test_bad_file_is_listed_and_the_others_kept(tmp_path, did, name, make, reason, bad_input):
    from forge_nb.data.curate import CurateError, run_curate
    share = tmp_path/"share"; share.mkdir()
    (share/"good.md").write_text("# Travel\n\n" + GOOD)
    if isinstance(make, tuple): os.symlink(make[1], share/name)
    else: (share/name).write_bytes(make())
    cfg = PipelineConfig(name="bad", runs_dir=str(tmp_path/"runs"), curate={
        "inputs": [{"name": "kb", "path": str(share), "max_bytes": 8000}], "filters": {"min_words": 5}})
    run = tmp_path/"runs"/"bad"
    res = run_curate(cfg, run, log=lambda *a: None)                       # not strict: the run finishes
    assert res["failed"] == 1
    rep = json.loads((run/"curate"/"report.json").read_text())
    assert [(f["path"], f["reason"]) for f in rep["failures"]] == [(name, reason)]
    kept = [json.loads(x)["id"] for x in (run/"curate"/"sources"/"kb.jsonl").read_text().splitlines()]
    assert kept == ["kb/good.md"]                                         # the other file's output is there
    # strict: the same run fails, with one line naming the file and its reason; the good output is still written
    cfg = cfg.model_copy(update={"name": "strict", "curate": cfg.curate.model_copy(update={"strict": True})})
    with pytest.raises(CurateError) as e: run_curate(cfg, tmp_path/"runs"/"strict", log=lambda *a: None)
    bad_input("data", did, e.value, names=[f"kb/{name}", reason, "curate.strict"])
    assert (tmp_path/"runs"/"strict"/"curate"/"sources"/"kb.jsonl").read_text().count("\n") == 1


def test_missing_input_folder_is_one_line(tmp_path, bad_input):
    from forge_nb.data.curate import CurateError, run_curate
    cfg = PipelineConfig(name="m", runs_dir=str(tmp_path), curate={"inputs": [{"name": "kb", "path": str(tmp_path/"no-such-share")}]})
    with pytest.raises(CurateError) as e: run_curate(cfg, tmp_path/"m", log=lambda *a: None)
    bad_input("inputs", "a curate input folder that does not exist", e.value, names=["curate.inputs[kb].path", "no-such-share"])


def test_legacy_encoded_text_is_kept_and_counted(tmp_path):
    from forge_nb.data.curate import run_curate
    share = tmp_path/"share"; share.mkdir()
    text = "Caf\u00e9 menu \u2013 the \u201cspecials\u201d of the week are served at noon in the canteen for the team and the visitors."
    (share/"menu.txt").write_bytes(text.encode("cp1252")); (share/"old.txt").write_bytes(("na\u00efve " + text).encode("latin-1", "replace"))
    cfg = PipelineConfig(name="enc", runs_dir=str(tmp_path), curate={"inputs": [{"name": "kb", "path": str(share)}], "filters": {"min_words": 5}})
    run_curate(cfg, tmp_path/"enc", log=lambda *a: None)
    docs = {json.loads(x)["path"]: json.loads(x) for x in (tmp_path/"enc"/"curate"/"sources"/"kb.jsonl").read_text().splitlines()}
    assert docs["menu.txt"]["text"] == text and docs["menu.txt"]["meta"]["encoding"] == "cp1252"
    rep = json.loads((tmp_path/"enc"/"curate"/"report.json").read_text())
    assert rep["domains"]["kb"]["legacy_encoding"] == 2 and not rep["failures"]


# ---------------------------------------------------------------- SLURM: phase 1 as a job array, 1 task vs 4

@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_job_array_one_vs_four_tasks_same_bytes(slurm_cluster, tmp_path, share, job_env, monkeypatch):
    """On the real local cluster: `curate.shards: 4` is submitted as one job array of 4 tasks (one per shard) and the
    stage's own job after it, which finds every shard done and only reduces; the curated bytes equal a 1-shard run's."""
    import subprocess as sp
    from forge_nb import launch as L
    from forge_nb.config import ResourcesConfig
    from forge_nb.jobs import read_registry
    monkeypatch.setenv("PYTHONPATH", job_env["PYTHONPATH"])      # sbatch exports it: the jobs import this checkout
    share_dir, _ = share
    out, jobs = {}, {}
    for name, shards in [("one", 1), ("four", 4)]:
        cfg = PipelineConfig(name=name, runs_dir=str(tmp_path/"runs"), stages=["curate"],
                             curate={"inputs": [{"name": "handbook", "path": str(share_dir/"handbook")}], "shards": shards,
                                     "filters": {"min_words": 30}},
                             resources=ResourcesConfig(cluster="slurm", partition="cpu", time_min=10))
        jobs[name] = L.launch(cfg, "curate")
    for name, job in jobs.items():
        assert job.wait(timeout_s=600) == "COMPLETED", (name, job.stdout(tail=40), job.stderr(tail=40))
        out[name] = {p.name: p.read_bytes() for p in (tmp_path/"runs"/name/"curate"/"sources").glob("*.jsonl")}
    assert out["one"] == out["four"] and out["one"]["handbook.jsonl"]
    reg = read_registry(tmp_path/"runs"/"four")
    tasks = [r for r in reg if r.get("array_task") is not None]
    assert sorted(r["array_task"] for r in tasks) == [0, 1, 2, 3]
    array_id = {r["job_id"].split("_")[0] for r in tasks}
    assert len(array_id) == 1                                           # one array, not four jobs
    rows = sp.run(["sacct", "-n", "-P", "-X", "-j", array_id.pop(), "-o", "JobID,State"], capture_output=True, text=True).stdout
    assert sum("COMPLETED" in x for x in rows.splitlines()) == 4, rows
    main = next(r for r in reg if r.get("stage") == "curate")
    assert any(d.startswith(tasks[0]["job_id"].split("_")[0]) for d in main["depends_on"])
    assert "4/4 shards already done" in jobs["four"].stdout(tail=200)  # the array did phase 1; the stage job only reduced


# ---------------------------------------------------------------- the demo from raw files

@pytest.mark.slow
def test_tiny_demo_from_raw_files(tmp_path, job_env):
    "`forge-nb demo --size tiny --curate`: the share is written, curated first, mixed in; the report shows what was planted, found."
    r = _run(["demo", "--size", "tiny", "--curate", "--foreground", "--runs-dir", str(tmp_path)], job_env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path/"demo-tiny"
    man = json.loads((run/"data"/"manifest.json").read_text())
    assert "handbook" in [x["source"] for x in man["mix"]["table"]]
    rep = json.loads((run/"curate"/"report.json").read_text())
    failed = {f"{f['domain']}/{f['path']}" for f in rep["failures"]}
    assert failed == {"handbook/broken-truncated.docx", "handbook/scan-no-text.pdf", "handbook/empty.md", "handbook/archive.bin"}
    assert rep["domains"]["handbook"]["dropped"].get("near_duplicate", 0) >= 1 and rep["domains"]["handbook"]["redactions"]
    page = (run/"report.html").read_text()
    assert "curation funnel" in page and not any(v in page for v in PLANTED_PII.values())
    secs = json.loads((run/"pipeline.json").read_text())["stages"]
    print("curate stage seconds:", secs["curate"], "of", {k: v["seconds"] for k, v in secs.items()})


def test_form_and_cli_offer_the_stage():
    "The config form (generated from the schema) has the curate section; the CLI has the `curate` verb (from the registry)."
    from forge_nb.cli import build_parser
    from forge_nb.widgets.forms import ConfigForm
    f = ConfigForm(PipelineConfig(curate={"inputs": [{"name": "kb", "path": "share/kb"}], "shards": 4}))
    assert f.widget_for("curate.dedup.threshold").value == 0.8 and f.widget_for("curate.shards").value == 4
    assert f.config.curate.inputs[0].name == "kb"
    assert build_parser().parse_args(["curate", "c.yaml", "--foreground"]).cmd == "curate"


def test_a_changed_share_changes_the_curate_key(tmp_path):
    "Adding or editing a file in an input folder reruns the stage (its key covers the share's listing), nothing else does."
    from forge_nb.pipeline import stage_key
    share = tmp_path/"share"; share.mkdir(); (share/"a.md").write_text("# A\n\n" + GOOD)
    cfg = PipelineConfig(name="k", runs_dir=str(tmp_path), stages=["curate", "data"], curate={"inputs": [{"name": "kb", "path": str(share)}]})
    k0 = stage_key(cfg, "curate", tmp_path/"k")
    assert stage_key(cfg, "curate", tmp_path/"k") == k0
    (share/"b.md").write_text("# B\n\n" + GOOD)
    k1 = stage_key(cfg, "curate", tmp_path/"k"); assert k1 != k0
    os.utime(share/"b.md", ns=(1, 1)); assert stage_key(cfg, "curate", tmp_path/"k") != k1
    # the data stage has a key before the curated sources exist (the curate stage runs first)
    assert stage_key(cfg, "data", tmp_path/"k", {"curate": k0})


def test_new_settings_never_resume_old_shards(tmp_path):
    "The same run directory, run again with other settings: the old plan and shards are discarded, not reused."
    from forge_nb.data.curate import run_curate
    share = tmp_path/"share"; share.mkdir(); (share/"a.md").write_text("# A\n\n" + GOOD + " alpha@example.com")
    base = {"inputs": [{"name": "kb", "path": str(share)}], "filters": {"min_words": 5}}
    run_curate(PipelineConfig(name="r", runs_dir=str(tmp_path), curate=base), tmp_path/"r", log=lambda *a: None)
    assert "<EMAIL>" in (tmp_path/"r"/"curate"/"sources"/"kb.jsonl").read_text()
    run_curate(PipelineConfig(name="r", runs_dir=str(tmp_path), curate={**base, "redact": {"enabled": False}}), tmp_path/"r", log=lambda *a: None)
    assert "alpha@example.com" in (tmp_path/"r"/"curate"/"sources"/"kb.jsonl").read_text()
