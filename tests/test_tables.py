"""Table writes are atomic: a reader never sees half a file, re-writes replace, runs stay apart."""

import threading

import pyarrow.parquet as pq

from pipeline.tables import read_table, write_table

ROW = {"stage": "pretrain", "split": "test", "accuracy": 0.5, "n_samples": 10}


def test_a_reader_never_sees_a_partial_partition(tmp_path):
    root, errors, stop = str(tmp_path), [], threading.Event()
    write_table(root, "accuracy", "r1", [{**ROW, "n_samples": 0}], {})

    def writer():
        for i in range(200):
            write_table(root, "accuracy", "r1", [{**ROW, "n_samples": i}] * (1 + i % 50), {})
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not stop.is_set():
        try:
            frame = pq.read_table(f"{root}/tables/accuracy/run_id=r1").to_pandas()
        except (FileNotFoundError, OSError):
            continue   # the partition was being swapped: read again (never a partial answer)
        if len(frame) == 0:
            continue
        if not (frame["n_samples"].nunique() == 1 and len(frame) == 1 + frame["n_samples"].iloc[0] % 50):
            errors.append((len(frame), frame["n_samples"].tolist()[:3]))
        reads += 1
    thread.join()
    assert not errors and reads > 0
    files = list((tmp_path / "tables/accuracy").iterdir())
    assert [p.name for p in files] == ["run_id=r1"] and len(list(files[0].iterdir())) == 1


def test_runs_with_different_ids_never_clobber_each_other(tmp_path):
    root = str(tmp_path)
    threads = [threading.Thread(target=write_table, args=(root, "accuracy", f"run{i}", [{**ROW, "n_samples": i}], {}))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    frame = read_table(root, "accuracy")
    assert sorted(frame["run_id"]) == [f"run{i}" for i in range(8)]
    assert all(frame.set_index("run_id").loc[f"run{i}", "n_samples"] == i for i in range(8))
    write_table(root, "accuracy", "run3", [ROW, ROW], {})     # a re-run replaces its own partition only
    assert len(read_table(root, "accuracy", "run3")) == 2 and len(read_table(root, "accuracy")) == 9
