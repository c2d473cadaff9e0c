"""T9: shingle hashes against a slow reference, verbatim-overlap coverage on planted leaks, the verdict,
the smoke corpus's own split, and `pgolf data split`."""

from __future__ import annotations

import numpy as np
import pytest

from pgolf_core.cli import main as cli_main
from pgolf_core.compliance import check_data_split
from pgolf_core.data import overlap
from pgolf_core.data.overlap import shingle_hashes, val_train_overlap
from pgolf_core.data.shards import list_shards, load_tokens, write_shard
from pgolf_core.data.smoke import drop_near_duplicates

BOS = 1


def slow_hash(window) -> int:
    return sum(int(t) * pow(overlap._BASE, j, 1 << 64) for j, t in enumerate(window)) % (1 << 64)


def test_shingle_hashes_equal_the_polynomial_and_skip_windows_with_a_bos():
    rng = np.random.default_rng(0)
    t = rng.integers(2, 1024, 300)
    t[[0, 100, 101, 250]] = BOS
    k = 8
    hashes, starts = shingle_hashes(t, k, bos_id=BOS)
    want = [i for i in range(len(t) - k + 1) if BOS not in t[i : i + k]]
    assert starts.tolist() == want
    assert hashes.tolist() == [slow_hash(t[i : i + k]) for i in want]
    # Strided by absolute position: offset 5 means positions p with (p + 5) % 4 == 0.
    _, strided = shingle_hashes(t, k, bos_id=BOS, stride=4, offset=5)
    assert strided.tolist() == [i for i in want if (i + 5) % 4 == 0]
    # Position independence: the same tokens hash the same wherever they sit.
    h_a, _ = shingle_hashes(t[110:130], k, bos_id=BOS)
    h_b, _ = shingle_hashes(t[100:140], k, bos_id=BOS)
    assert set(h_a.tolist()) <= set(h_b.tolist())


def _docs(rng, lengths, vocab=1024):
    return [np.concatenate([[BOS], rng.integers(2, vocab, n)]) for n in lengths]


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """Validation of 6 documents; training holds doc 3 whole (across a shard chunk boundary) and a
    100-token span of doc 4, amid unrelated documents."""
    monkeypatch.setattr(overlap, "CHUNK_TOKENS", 1000)  # force many chunks, so overlaps across them count
    rng = np.random.default_rng(1)
    val_docs = _docs(rng, [300, 40, 500, 700, 900, 200])
    val = np.concatenate(val_docs).astype(np.uint16)
    other = _docs(rng, [1500, 800, 1200])
    train0 = np.concatenate([other[0], val_docs[3], other[1]])  # doc 3 starts at 1501, spans chunk 1000..2000
    train1 = np.concatenate([other[2][:600], val_docs[4][201:301], other[2][600:]])
    files = [
        write_shard(tmp_path / f"fineweb_train_00000{i}.bin", x.astype(np.uint16))
        for i, x in enumerate([train0, train1])
    ]
    return val, files, val_docs


def test_overlap_finds_the_copied_document_and_measures_the_partial_span_exactly(planted):
    val, files, _val_docs = planted
    for stride in (1, 16):
        r = val_train_overlap(val, files, k=64, stride=stride)
        assert r.val_docs == 6 and r.val_docs_checked == 5  # the 40-token doc is shorter than k
        assert r.leaked == [3]
        assert r.doc_fraction[3] == 1.0
        # 100 identical tokens of doc 4's 900; random neighbours match by chance with p = 1/1022 each.
        assert r.doc_fraction[4] == pytest.approx(100 / 900, abs=2 / 900)
        assert set(r.doc_fraction) == {3, 4}
        assert not r.clean
    # A span shorter than k + stride - 1 may fall between sampled windows; one of >= k is never missed
    # at stride 1.
    sampled = val_train_overlap(val, files[:1], k=64, stride=16, max_train_tokens=1000)
    assert sampled.train_tokens_scanned <= 1000 and sampled.leaked == []


def test_short_boilerplate_is_reported_not_counted_as_a_leak(tmp_path):
    rng = np.random.default_rng(2)
    notice = rng.integers(2, 1024, 70)
    val = np.concatenate(
        [[BOS], notice, rng.integers(2, 1024, 20), [BOS], rng.integers(2, 1024, 400)]
    ).astype(np.uint16)
    train = np.concatenate([[BOS], rng.integers(2, 1024, 300), notice, rng.integers(2, 1024, 50)]).astype(
        np.uint16
    )
    f = write_shard(tmp_path / "fineweb_train_000000.bin", train)
    r = val_train_overlap(val, [f], k=64, stride=1)
    assert r.doc_fraction[0] == pytest.approx(70 / 90, abs=0.02)
    assert r.leaked == [] and r.short_boilerplate == [0] and r.clean


def test_check_data_split_verdicts(planted, tmp_path):
    val, files, _val_docs = planted
    leaky = check_data_split(val, files, expected_val_docs=6)
    assert leaky.check == "T9" and leaky.passed is False and leaky.measured == 1.0
    assert "validation documents [3] appear in the training data" in leaky.reason

    clean_train = write_shard(
        tmp_path / "clean" / "fineweb_train_000000.bin",
        np.concatenate(_docs(np.random.default_rng(5), [3000])).astype(np.uint16),
    )
    ok = check_data_split(val, [clean_train], expected_val_docs=6, expected_train_shards=1)
    assert ok.passed is True and ok.measured == 0.0
    # The known failure: a build with fewer validation documents than the canonical split.
    short = check_data_split(val, [clean_train], expected_val_docs=10)
    assert short.passed is False and "validation has 6 documents, expected 10" in short.reason
    shards = check_data_split(val, [clean_train], expected_train_shards=80)
    assert shards.passed is False and "1 training shards, expected 80" in shards.reason


def test_near_duplicate_filter_keeps_the_container_and_the_first_copy():
    words = [f"w{i}" for i in range(200)]
    container = " ".join(words)
    section = " ".join(words[50:120])  # a sub-section of the container (like pydoc's `if` inside `compound`)
    other = " ".join(f"x{i}" for i in range(100))
    docs = [section, other, container, other]
    assert drop_near_duplicates(docs) == [other, container]


def test_smoke_corpus_passes_its_own_split_check(smoke_dir, smoke_manifest):
    val = load_tokens(list_shards(smoke_dir / "fineweb_val_*.bin"))
    verdict = check_data_split(
        val,
        list_shards(smoke_dir / "fineweb_train_*.bin"),
        expected_val_docs=smoke_manifest["splits"]["val"]["documents"],
    )
    assert verdict.passed, verdict.reason


def test_pgolf_data_split_exit_codes(smoke_dir, planted, tmp_path, capsys):
    assert cli_main(["data", "split", str(smoke_dir), "--quiet"]) == 0
    assert "T9 pass" in capsys.readouterr().out
    val, files, _ = planted
    write_shard(files[0].parent / "fineweb_val_000000.bin", val)
    assert cli_main(["data", "split", str(files[0].parent), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "expected validation documents: 50,000 (the official split)" in out and "T9 FAIL" in out
    assert cli_main(["data", "split", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no shards match" in err and "nothing/fineweb_val_*.bin" in err


def test_pipeline_t9_reads_the_manifest_count_and_can_be_skipped(smoke_dir, tmp_path):
    from pgolf_core.config import DataConfig
    from pgolf_core.pipeline import data_split_verdict

    dc = DataConfig(source="local", root=str(smoke_dir), tokenizer=str(smoke_dir / "tokenizer.model"))
    verdict = data_split_verdict(dc, 20_000_000)
    assert (
        verdict.passed is True
        and "0 of 64 validation documents" in verdict.reason
        and "a sample" not in verdict.reason
    )
    sampled = data_split_verdict(dc, 100_000)
    assert sampled.passed is True and "a sample: the first 100,000 training tokens" in sampled.reason
    assert data_split_verdict(dc, 0).passed is None
    # The official source expects the canonical 50,000 documents, whatever the folder holds.
    official = DataConfig(source="official", root=str(smoke_dir))
    assert "validation has 64 documents, expected 50,000" in data_split_verdict(official, 100_000).reason


def test_a_longer_copy_found_after_a_shorter_one_extends_the_coverage(tmp_path):
    """Doc content [0, 400): training holds tokens [0, 150) first, then [0, 160) elsewhere; coverage is the
    union of the aligned runs (160 tokens), not the first run found."""
    rng = np.random.default_rng(7)
    content = rng.integers(2, 1024, 400)
    val = np.concatenate([[BOS], content]).astype(np.uint16)
    # Neighbours that differ from the copied spans' own neighbours, so runs cannot grow by chance.
    train = np.concatenate([[BOS, 0], content[:150], [0, BOS, 0], content[:160], [0]]).astype(np.uint16)
    f = write_shard(tmp_path / "fineweb_train_000000.bin", train)
    for stride in (1, 16):
        r = val_train_overlap(val, [f], k=64, stride=stride)
        assert r.doc_fraction == {0: 160 / 400} and r.val_tokens_covered == 160 and r.leaked == []


@pytest.fixture(scope="module")
def leaky_caseops_split(tmp_path_factory):
    """The #2127 shape at full document count: 50,000 short validation documents, of which 10,000-49,999
    were also exported into training (behind unrelated documents, across 4 shards)."""
    rng = np.random.default_rng(11)
    docs = _docs(rng, [20] * 50_000)
    val = np.concatenate(docs).astype(np.uint16)
    tail = np.concatenate(_docs(rng, [500] * 20) + docs[10_000:]).astype(np.uint16)
    out = tmp_path_factory.mktemp("leaky")
    parts = np.array_split(tail, 4)
    files = [write_shard(out / f"fineweb_train_{i:06d}.bin", part) for i, part in enumerate(parts)]
    return val, files


def test_t9_recognises_the_known_caseops_leak(leaky_caseops_split, planted):
    from pgolf_core.data.overlap import known_leak

    val, files = leaky_caseops_split
    report = val_train_overlap(val, files, k=8, stride=4, min_doc_tokens=16)
    assert report.val_docs == 50_000 and report.leaked[0] == 10_000 and len(report.leaked) >= 39_990
    why = known_leak(report, train_shards=len(files))
    assert why is not None and "the known CaseOps leak (#2127)" in why and "--val-docs 10000" in why
    assert "validation documents 10,000-49,999 into training" in why
    found = f"{len(report.leaked):,} validation documents found in training, all from document 10,000 on"
    assert found in why
    # The other fingerprints, without a scan: the leaky exports' shard count, a 10,000-document split.
    assert "1,499 training shards, the leaky exports' count" in known_leak(train_shards=1499)
    short = "a 10,000-document validation split where the canonical one has 50,000"
    assert short in known_leak(val_docs=10_000)
    assert known_leak(train_shards=80, val_docs=50_000) is None
    # Not this leak: a clean scan, an ordinary copied document, a few late documents.
    assert known_leak(val_train_overlap(val, files[:0], k=8)) is None
    assert known_leak(val_train_overlap(*planted[:2], k=64)) is None
    ten_late_docs = write_shard(files[0].parent / "fineweb_train_few.bin", val[20_000 * 21 : 20_010 * 21])
    few = val_train_overlap(val, [ten_late_docs], k=8, stride=4, min_doc_tokens=16)
    assert few.leaked == list(range(20_000, 20_010)) and known_leak(few) is None


def test_check_data_split_names_the_known_leak_first(leaky_caseops_split):
    """T9 on the #2127 shape: the verdict fails and its reason begins with the known leak, before the
    list of copied documents."""
    val, files = leaky_caseops_split
    v = check_data_split(val, files, expected_val_docs=50_000, k=8, stride=4)
    assert v.passed is False
    assert v.reason.startswith("the known CaseOps leak (#2127)"), v.reason[:200]
    assert v.reason.index("--val-docs 10000") < v.reason.index("appear in the training data")


def test_a_1499_shard_training_set_is_the_known_leak_even_without_a_copy(tmp_path):
    """The leaky exports' fingerprint alone (1,499 training shards, here tiny ones of unrelated
    documents) fails T9 with the explanation; the same data in 80 shards passes."""
    rng = np.random.default_rng(5)
    val = np.concatenate(_docs(rng, [120] * 12)).astype(np.uint16)
    train = np.concatenate(_docs(rng, [30] * 1499)).astype(np.uint16)
    leaky_dir, clean_dir = tmp_path / "leaky", tmp_path / "clean"
    leaky_dir.mkdir()
    clean_dir.mkdir()
    leaky = [
        write_shard(leaky_dir / f"fineweb_train_{i:06d}.bin", part)
        for i, part in enumerate(np.array_split(train, 1499))
    ]
    clean = [
        write_shard(clean_dir / f"fineweb_train_{i:06d}.bin", part)
        for i, part in enumerate(np.array_split(train, 80))
    ]
    v = check_data_split(val, leaky, expected_val_docs=12)
    assert v.passed is False and v.measured == 0.0  # nothing copied: the shard count alone
    assert v.reason.startswith("the known CaseOps leak (#2127)")
    assert "1,499 training shards, the leaky exports' count" in v.reason
    ok = check_data_split(val, clean, expected_val_docs=12)
    assert ok.passed is True and "CaseOps leak" not in ok.reason
    # A 10,000-document split is the leak's fingerprint where 50,000 are expected, not where a pgolf
    # export's manifest states 10,000.
    val_10k = np.concatenate(_docs(rng, [3] * 10_000)).astype(np.uint16)
    short = check_data_split(val_10k, clean, expected_val_docs=50_000)
    assert short.passed is False and short.reason.startswith("the known CaseOps leak (#2127)")
    assert "a 10,000-document validation split where the canonical one has 50,000" in short.reason
    assert check_data_split(val_10k, clean, expected_val_docs=10_000).passed is True
