"""Tests for usam.store: schema, round trip, shards, resume, corruption, and kill -9 at random moments."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import usam.store
from usam.errors import InvalidInputError, StoreError, UsamWarning
from usam.files import TEMPORARY_SUFFIX, temporary_prefix
from usam.store import (
    NUM_MASK_TOKENS,
    SCHEMA_VERSION,
    STORE_FILE_NAME,
    TOKEN_SIZE,
    StoreWriter,
    open_store,
    read_table,
    row_schema,
    rows_to_table,
    shard_of_key,
    store_info,
    token_arrays,
)

MODELS = ("sam2.1-tiny", "sam2.1-large")
NULLABLE_COLUMNS = {field.name for field in row_schema() if field.nullable}


def make_row(image_key: str, object_id: str, model: str = "sam2.1-tiny", *, seed: int = 0, nulls: bool = False):
    """A row with random values in every column of the schema, built from the schema itself."""
    rng = np.random.default_rng(seed)
    strings = {"image_key": image_key, "object_id": object_id, "model": model, "dataset": "coco", "split": "val"}
    row = {}
    for field in row_schema():
        if nulls and field.nullable:
            row[field.name] = None
        elif pa.types.is_string(field.type):
            row[field.name] = strings[field.name]
        elif pa.types.is_integer(field.type):
            row[field.name] = int(rng.integers(1, 10_000))
        elif pa.types.is_fixed_size_list(field.type):
            values = rng.standard_normal(field.type.list_size).astype(np.float32)
            # Token stacks are passed the way the model produces them; the store flattens them.
            if field.type.list_size == NUM_MASK_TOKENS * TOKEN_SIZE:
                values = values.reshape(NUM_MASK_TOKENS, TOKEN_SIZE)
            row[field.name] = values
        else:
            row[field.name] = float(rng.random())
    return row


def crash_job_rows(image_key: str, index: int) -> list[dict]:
    """The rows the crash-test job writes for an image: 0, 2 or 4 rows (0, 1 or 2 objects x 2 models)."""
    return [make_row(image_key, f"obj{obj}", model, seed=index) for obj in range(index % 3) for model in MODELS]


def triples(table: pa.Table) -> list[tuple[str, str, str]]:
    columns = [table.column(name).to_pylist() for name in ("image_key", "object_id", "model")]
    return list(zip(*columns, strict=True))


def visible_files(root: Path) -> list[str]:
    return sorted(name for name in os.listdir(root) if not name.startswith((".", "_")))


# Schema and conversion ---------------------------------------------------------------------------------


def test_row_schema_columns_and_types():
    schema = row_schema()
    assert schema.metadata[b"usam.schema_version"] == str(SCHEMA_VERSION).encode()
    assert schema.field("iou_token").type.list_size == TOKEN_SIZE
    assert schema.field("mask_tokens").type.list_size == NUM_MASK_TOKENS * TOKEN_SIZE
    assert schema.field("extra_points").type.list_size == 14
    assert schema.field("image_height").type == pa.int32()
    assert schema.field("object_area").type == pa.int64()
    assert {
        "model_gap",
        "prompt_gap",
        "task_gap",
        "h_std",
        "h_theta",
        "h_prompt",
        "h_augmentation",
        "h_task",
        "h_all",
        "h_std_sam_pick",
        "h_theta_sam_pick",
        "h_prompt_sam_pick",
        "h_augmentation_sam_pick",
        "h_all_sam_pick",
    } == NULLABLE_COLUMNS
    half = row_schema("float16")
    for name in ("iou_token", "mask_tokens", "dense_iou_token", "dense_mask_tokens"):
        assert half.field(name).type.value_type == pa.float16()
    assert half.field("sam_scores").type.value_type == pa.float32()
    with pytest.raises(InvalidInputError, match="token_dtype"):
        row_schema("bfloat16")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda row: row.pop("iou"), "lacks column 'iou'"),
        (lambda row: row.update(surprise=1), "unknown column 'surprise'"),
        (lambda row: row.update(iou_token=np.zeros(255)), "'iou_token'.*needs 256 values, got 255"),
        (lambda row: row.update(mask_tokens=np.zeros((3, 256))), "'mask_tokens'.*needs 1024 values"),
        (lambda row: row.update(center_point=None), "'center_point' may not be None"),
        (lambda row: row.update(iou=None), "'iou' may not be None"),
        (lambda row: row.update(image_height=3.5), "'image_height'"),
        (lambda row: row.update(model=7), "'model'"),
    ],
)
def test_rows_to_table_names_the_bad_column(change, message):
    row = make_row("img", "obj")
    change(row)
    with pytest.raises(StoreError, match=message):
        rows_to_table([make_row("img", "other"), row], row_schema())


def test_rows_to_table_accepts_numpy_scalars_and_token_grids():
    row = make_row("img", "obj")
    row["iou"] = np.float32(0.25)
    row["image_width"] = np.int64(640)
    row["mask_tokens"] = np.ones((NUM_MASK_TOKENS, TOKEN_SIZE), dtype=np.float64)
    table = rows_to_table([row], row_schema("float16"))
    assert table.column("iou").to_pylist() == [0.25]
    assert table.column("image_width").to_pylist() == [640]
    assert token_arrays(table, "mask_tokens").dtype == np.float16


# Round trip ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token_dtype", ["float32", "float16"])
def test_round_trip_of_every_column(tmp_path, token_dtype):
    rows = {}
    with StoreWriter(tmp_path, token_dtype=token_dtype, rows_per_part=5) as writer:
        for image in range(4):
            key = f"img{image}"
            image_rows = [
                make_row(key, f"obj{obj}", model, seed=10 * image + obj, nulls=obj == 1)
                for obj in range(2)
                for model in MODELS
            ]
            writer.add_image(key, image_rows)
            rows.update({(key, row["object_id"], row["model"]): row for row in image_rows})

    table = read_table(tmp_path).sort_by(
        [("image_key", "ascending"), ("object_id", "ascending"), ("model", "ascending")]
    )
    expected = [rows[triple] for triple in sorted(rows)]
    assert triples(table) == sorted(rows)
    schema = row_schema(token_dtype)
    assert table.schema.equals(schema)
    for field in schema:
        if pa.types.is_fixed_size_list(field.type):
            numpy_type = field.type.value_type.to_pandas_dtype()
            want = np.stack([np.asarray(row[field.name]).reshape(-1).astype(numpy_type) for row in expected])
            got = token_arrays(table, field.name)
            assert got.dtype == numpy_type, field.name
            np.testing.assert_array_equal(got.reshape(len(expected), -1), want, err_msg=field.name)
        elif pa.types.is_floating(field.type):
            want = [None if row[field.name] is None else float(np.float32(row[field.name])) for row in expected]
            assert table.column(field.name).to_pylist() == want, field.name
        else:
            assert table.column(field.name).to_pylist() == [row[field.name] for row in expected], field.name
    assert table.column("model_gap").null_count == len(MODELS) * 4  # the obj1 rows
    assert store_info(tmp_path)["token_dtype"] == token_dtype


def test_token_arrays_shapes_dtypes_and_zero_copy(tmp_path):
    table = rows_to_table([make_row("img", f"obj{index}", seed=index) for index in range(3)], row_schema("float16"))
    mask_tokens = token_arrays(table, "mask_tokens")
    assert mask_tokens.shape == (3, NUM_MASK_TOKENS, TOKEN_SIZE)
    assert mask_tokens.dtype == np.float16
    assert not mask_tokens.flags.writeable  # a view on the Arrow buffer, not a copy
    assert token_arrays(table, "mask_tokens", dtype=np.float32).dtype == np.float32
    assert token_arrays(table, "extra_points").shape == (3, 14)
    assert token_arrays(table, "sam_scores").shape == (3, 3)
    # A sliced or multi-chunk column must give the right rows.
    np.testing.assert_array_equal(token_arrays(table.slice(1), "iou_token"), token_arrays(table, "iou_token")[1:])
    two_chunks = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    np.testing.assert_array_equal(token_arrays(two_chunks, "iou_token"), token_arrays(table, "iou_token"))
    assert token_arrays(table.slice(0, 0), "iou_token").shape == (0, TOKEN_SIZE)
    with pytest.raises(StoreError, match="no column 'nope'"):
        token_arrays(table, "nope")
    with pytest.raises(StoreError, match="not a fixed-size list"):
        token_arrays(table, "iou")


# Store layout, shards, resume ----------------------------------------------------------------------------


def test_pyarrow_dataset_reads_the_store_and_sees_only_parts(tmp_path):
    with StoreWriter(tmp_path, rows_per_part=3, metadata={"dataset": "coco"}) as writer:
        for index in range(10):
            writer.add_image(f"img{index}", crash_job_rows(f"img{index}", index))
    dataset = ds.dataset(tmp_path)
    assert all(Path(file).name.startswith("part-") for file in dataset.files)
    assert visible_files(tmp_path) == sorted(Path(file).name for file in dataset.files)
    table = dataset.to_table()
    assert table.schema.equals(row_schema())
    expected = sorted(
        (f"img{i}", row["object_id"], row["model"]) for i in range(10) for row in crash_job_rows(f"img{i}", i)
    )
    assert sorted(triples(table)) == expected
    assert (tmp_path / STORE_FILE_NAME).exists()
    assert open_store(tmp_path).count_rows() == len(expected)
    info = store_info(tmp_path)
    assert info["num_rows"] == len(expected)
    assert info["num_parts"] == len(dataset.files)
    assert info["metadata"] == {"dataset": "coco"}
    assert info["schema_version"] == SCHEMA_VERSION


def test_two_shards_write_into_one_directory(tmp_path):
    keys = [f"img{index:03d}" for index in range(40)]
    writers = [StoreWriter(tmp_path, shard_index=shard, num_shards=2, rows_per_part=4) for shard in range(2)]
    for index, key in enumerate(keys):  # interleaved, as two processes would be
        writers[shard_of_key(key, 2)].add_image(key, crash_job_rows(key, index))
    for writer in writers:
        writer.close()
    table = read_table(tmp_path, columns=["image_key", "object_id", "model"])
    counts = Counter(triples(table))
    assert set(counts.values()) == {1}
    assert len(counts) == sum(len(crash_job_rows(key, index)) for index, key in enumerate(keys))
    large = read_table(tmp_path, columns=["model", "iou"], filter=pc.field("model") == "sam2.1-large")
    assert large.column_names == ["model", "iou"]
    assert set(large.column("model").to_pylist()) == {"sam2.1-large"}
    assert large.num_rows == len(counts) // 2
    for shard in range(2):
        with StoreWriter(tmp_path, shard_index=shard, num_shards=2) as writer:
            assert writer.completed_keys() == {key for key in keys if shard_of_key(key, 2) == shard}
    assert {shard_of_key(key, 2) for key in keys} == {0, 1}


def test_zero_row_images_are_recorded_as_done(tmp_path):
    with StoreWriter(tmp_path, rows_per_part=100) as writer:
        writer.add_image("empty-alone", [])
        writer.flush()  # a flush of zero-row images only
        writer.add_image("with-rows", [make_row("with-rows", "obj")])
        writer.add_image("empty-too", [])
        assert writer.completed_keys() == {"empty-alone"}  # buffered images are not done yet
    with StoreWriter(tmp_path) as writer:
        assert writer.completed_keys() == {"empty-alone", "with-rows", "empty-too"}
    assert read_table(tmp_path).num_rows == 1
    assert store_info(tmp_path)["num_empty_images"] == 2


def test_store_without_rows_reads_as_an_empty_table(tmp_path):
    with StoreWriter(tmp_path) as writer:
        writer.add_image("empty", [])
    table = read_table(tmp_path)
    assert table.num_rows == 0
    assert table.schema.equals(row_schema())


def test_resume_skips_completed_keys_and_refuses_duplicates(tmp_path):
    keys = [f"img{index}" for index in range(12)]
    with StoreWriter(tmp_path, rows_per_part=4) as writer:
        for index, key in enumerate(keys[:7]):
            writer.add_image(key, crash_job_rows(key, index))
    with StoreWriter(tmp_path, rows_per_part=4) as writer:
        done = writer.completed_keys()
        assert done == set(keys[:7])
        with pytest.raises(StoreError, match="already in the store"):
            writer.add_image(keys[0], crash_job_rows(keys[0], 0))
        for index, key in enumerate(keys):
            if key not in done:
                writer.add_image(key, crash_job_rows(key, index))
        with pytest.raises(StoreError, match="already in the store"):
            writer.add_image(keys[-1], [])  # still buffered: as much a duplicate
    counts = Counter(triples(read_table(tmp_path)))
    assert set(counts.values()) == {1}
    assert len(counts) == sum(len(crash_job_rows(key, index)) for index, key in enumerate(keys))


def test_add_image_checks_rows_belong_to_the_image(tmp_path):
    with StoreWriter(tmp_path) as writer:
        with pytest.raises(StoreError, match="image_key 'other'"):
            writer.add_image("img", [make_row("other", "obj")])
        with pytest.raises(StoreError, match="two rows for object 'obj'"):
            writer.add_image("img", [make_row("img", "obj"), make_row("img", "obj")])
        with pytest.raises(StoreError, match=r"Image 'img'.*'iou_token'"):
            writer.add_image("img", [{**make_row("img", "obj"), "iou_token": [1.0, 2.0]}])
        writer.add_image("img", [make_row("img", "obj")])  # the failed attempts left nothing behind
    assert read_table(tmp_path).num_rows == 1


def test_exception_in_with_block_keeps_complete_images(tmp_path):
    def extract_then_fail() -> None:
        with StoreWriter(tmp_path, rows_per_part=100) as writer:
            writer.add_image("img", [make_row("img", "obj")])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        extract_then_fail()
    assert triples(read_table(tmp_path)) == [("img", "obj", "sam2.1-tiny")]


def test_writer_is_closed_after_close(tmp_path):
    writer = StoreWriter(tmp_path)
    writer.close()
    writer.close()
    with pytest.raises(StoreError, match="closed"):
        writer.add_image("img", [])


# Options and concurrency ---------------------------------------------------------------------------------


def test_metadata_mismatch_is_refused(tmp_path):
    options = {"dataset": "coco", "split": "val", "models": list(MODELS), "seed": 0, "monte_carlo": True}
    StoreWriter(tmp_path, metadata=options).close()
    StoreWriter(tmp_path, metadata={**options, "models": tuple(MODELS)}).close()  # same after JSON
    with pytest.raises(StoreError, match=r"seed=0.*seed=1.*new --out"):
        StoreWriter(tmp_path, metadata={**options, "seed": 1})
    with pytest.raises(StoreError, match="monte_carlo"):
        StoreWriter(tmp_path, metadata={key: value for key, value in options.items() if key != "monte_carlo"})
    with pytest.raises(StoreError, match=r"token_dtype 'float32'.*'float16'.*new --out"):
        StoreWriter(tmp_path, metadata=options, token_dtype="float16")
    with pytest.raises(StoreError, match=r"num_shards 1.*2"):
        StoreWriter(tmp_path, metadata=options, num_shards=2)
    stored = json.loads((tmp_path / STORE_FILE_NAME).read_text())
    stored["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / STORE_FILE_NAME).write_text(json.dumps(stored))
    with pytest.raises(StoreError, match="schema version"):
        StoreWriter(tmp_path, metadata=options)
    with pytest.raises(StoreError, match="schema version"):
        open_store(tmp_path)


def test_bad_arguments(tmp_path):
    with pytest.raises(InvalidInputError, match="Shard 2 of 2"):
        StoreWriter(tmp_path, shard_index=2, num_shards=2)
    with pytest.raises(InvalidInputError, match="rows_per_part"):
        StoreWriter(tmp_path, rows_per_part=0)
    with pytest.raises(InvalidInputError, match="JSON"):
        StoreWriter(tmp_path, metadata={"when": object()})


def test_store_file_creation_is_race_safe(tmp_path):
    barrier = threading.Barrier(8)
    errors = []

    def start_shard(shard: int) -> None:
        barrier.wait()
        try:
            StoreWriter(tmp_path, shard_index=shard, num_shards=8, metadata={"seed": 3}).close()
        except Exception as error:  # collected: an exception in a thread would not fail the test
            errors.append(error)

    threads = [threading.Thread(target=start_shard, args=(shard,)) for shard in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert json.loads((tmp_path / STORE_FILE_NAME).read_text())["metadata"] == {"seed": 3}
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-") or name.endswith(".tmp")]


def test_second_writer_of_a_running_shard_is_refused(tmp_path):
    with StoreWriter(tmp_path, shard_index=0, num_shards=2):
        with pytest.raises(StoreError, match="Another process is writing shard 00000-of-00002"):
            StoreWriter(tmp_path, shard_index=0, num_shards=2)
        StoreWriter(tmp_path, shard_index=1, num_shards=2).close()  # other shards are fine
    StoreWriter(tmp_path, shard_index=0, num_shards=2).close()  # and the lock is released on close


def test_leftover_temp_files_of_own_shard_are_deleted(tmp_path):
    StoreWriter(tmp_path, num_shards=2).close()
    own = tmp_path / ".tmp-00000-of-00002-deadbeef-part.parquet"
    other = tmp_path / ".tmp-00001-of-00002-deadbeef-part.parquet"
    own.write_bytes(b"half a part")
    other.write_bytes(b"being written by shard 1")
    StoreWriter(tmp_path, shard_index=0, num_shards=2).close()
    assert not own.exists()
    assert other.exists()
    assert ds.dataset(tmp_path).files == []


# Errors on reading ---------------------------------------------------------------------------------------


def test_missing_or_foreign_directories_are_refused(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nowhere")
    with pytest.raises(StoreError, match="not a usam store"):
        read_table(tmp_path)
    (tmp_path / "holiday.jpg").write_bytes(b"")
    with pytest.raises(StoreError, match=r"is not empty.*new or empty --out"):
        StoreWriter(tmp_path)


def test_corrupt_part_is_named(tmp_path):
    with StoreWriter(tmp_path, rows_per_part=2) as writer:
        for index in range(4):
            writer.add_image(f"img{index}", [make_row(f"img{index}", "obj", seed=index)])
    good_part = sorted(tmp_path.glob("part-*.parquet"))[0]
    data = good_part.read_bytes()
    bad_part = tmp_path / "part-00000-of-00001-000099.parquet"
    bad_part.write_bytes(data[: len(data) // 2])  # someone copied in half a file
    with pytest.raises(StoreError, match=re.escape(bad_part.name) + " is corrupt or truncated.*Delete it"):
        open_store(tmp_path)
    with pytest.raises(StoreError, match=re.escape(bad_part.name)):
        read_table(tmp_path)
    with pytest.raises(StoreError, match=re.escape(bad_part.name)):
        StoreWriter(tmp_path)  # reading completed keys needs every part of the shard
    bad_part.unlink()
    with StoreWriter(tmp_path) as writer:
        assert writer.completed_keys() == {f"img{index}" for index in range(4)}


def test_part_with_foreign_schema_is_named(tmp_path):
    StoreWriter(tmp_path).close()
    stray = tmp_path / "part-00000-of-00001-000007.parquet"
    pq.write_table(pa.table({"image_key": ["img"]}), stray)
    with pytest.raises(StoreError, match=re.escape(stray.name) + " does not have the store's schema"):
        open_store(tmp_path)


# Kill -9 at random moments -------------------------------------------------------------------------------

CRASH_JOB_IMAGES = 800
CRASH_JOB_SCRIPT = """
import sys
import types

# Load usam.store without usam/__init__, which imports torch: that would add a second or more to each of
# the many processes this test starts.
package = types.ModuleType("usam")
package.__path__ = [{package_dir!r}]
sys.modules["usam"] = package
sys.path.insert(0, {tests_dir!r})

from test_store_writer import crash_job_rows
from usam.store import StoreWriter, shard_of_key

shard_index, num_shards = {shard_index}, {num_shards}
writer = StoreWriter({root!r}, shard_index=shard_index, num_shards=num_shards, rows_per_part=4)
done = writer.completed_keys()
print("started", flush=True)
for index in range({num_images}):
    key = f"img{{index:04d}}"
    if shard_of_key(key, num_shards) == shard_index and key not in done:
        writer.add_image(key, crash_job_rows(key, index))
writer.close()
"""


def launch_crash_job(root: Path, shard_index: int, num_shards: int) -> subprocess.Popen:
    script = CRASH_JOB_SCRIPT.format(
        package_dir=str(Path(usam.store.__file__).parent.parent),
        tests_dir=str(Path(__file__).parent),
        root=str(root),
        shard_index=shard_index,
        num_shards=num_shards,
        num_images=CRASH_JOB_IMAGES,
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_started(process: subprocess.Popen) -> None:
    started = process.stdout.readline()
    if started.strip() != "started":
        process.wait(timeout=30)
        pytest.fail(f"crash job did not start: {started!r}\n{process.stderr.read()}")


def start_crash_job(root: Path, shard_index: int, num_shards: int) -> subprocess.Popen:
    process = launch_crash_job(root, shard_index, num_shards)
    wait_until_started(process)
    return process


def test_kill_at_random_moments_then_rerun_writes_every_row_once(tmp_path):
    num_shards = 2
    timing = random.Random(20250505)
    kills = 0
    for _ in range(4):
        # Each job's kill moment counts from the moment that job said it started: a job does not get the
        # start-up time of the jobs started after it as a head start.
        # All jobs are launched before any is waited for, so that they run side by side.
        processes = [launch_crash_job(tmp_path, shard, num_shards) for shard in range(num_shards)]
        jobs = []
        for process in processes:
            wait_until_started(process)
            jobs.append((time.monotonic() + timing.uniform(0.0, 0.08), process))
        for kill_at, process in sorted(jobs, key=lambda job: job[0]):
            try:
                process.wait(timeout=max(0.0, kill_at - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                kills += 1
            _, stderr = process.communicate(timeout=30)
            assert process.returncode in (0, -signal.SIGKILL), stderr
        # Whatever the moment of the kill, the store holds only complete parts and no row twice.
        counts = Counter(triples(read_table(tmp_path, columns=["image_key", "object_id", "model"])))
        assert not [triple for triple, count in counts.items() if count > 1]

    assert kills >= 6, "the jobs finished before most kills; make CRASH_JOB_IMAGES larger"
    for process in [start_crash_job(tmp_path, shard, num_shards) for shard in range(num_shards)]:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr

    keys = [f"img{index:04d}" for index in range(CRASH_JOB_IMAGES)]
    expected = {
        (key, row["object_id"], row["model"]) for index, key in enumerate(keys) for row in crash_job_rows(key, index)
    }
    counts = Counter(triples(read_table(tmp_path, columns=["image_key", "object_id", "model"])))
    assert set(counts) == expected
    assert set(counts.values()) == {1}
    assert Counter(triples(ds.dataset(tmp_path).to_table(columns=["image_key", "object_id", "model"]))) == counts
    done = set()
    for shard in range(num_shards):
        with StoreWriter(tmp_path, shard_index=shard, num_shards=num_shards) as writer:
            done |= writer.completed_keys()
    assert done == set(keys)  # including the images with zero rows
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-") or name.endswith(".tmp")]


def test_manifest_summarises_each_shard(tmp_path):
    with StoreWriter(tmp_path, shard_index=1, num_shards=2, rows_per_part=1) as writer:
        writer.add_image("a", [make_row("a", "1")])
        writer.add_image("b", [])
        writer.add_image("c", [make_row("c", "1"), make_row("c", "2")])
    manifest = json.loads((tmp_path / "_manifest-00001-of-00002.json").read_text())
    assert manifest["image_keys"] == ["a", "b", "c"]
    assert manifest["completed_images"] == 3
    assert manifest["shard_index"] == 1
    assert len(manifest["parts"]) == 2
    assert all((tmp_path / name).is_file() for name in manifest["parts"])
    assert ds.dataset(tmp_path).count_rows() == 3  # pyarrow does not read the manifest


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


def test_temporaries_of_killed_writers_are_removed_on_open(tmp_path):
    StoreWriter(tmp_path, num_shards=2).close()
    dead, alive = _dead_pid(), os.getpid()

    def temporary(final_name: str, pid: int) -> Path:
        prefix = temporary_prefix(tmp_path / final_name).replace(f"-{os.getpid()}-", f"-{pid}-")
        path = tmp_path / f"{prefix}x1y2{TEMPORARY_SUFFIX}"
        path.write_bytes(b"half a file")
        return path

    dead_other_shard = temporary("part-00001-of-00002-000000.parquet", dead)
    dead_store_file = temporary(STORE_FILE_NAME, dead)
    own_shard = temporary("part-00000-of-00002-000003.parquet", alive)  # e.g. from another host: this shard is ours
    own_manifest = temporary("_manifest-00000-of-00002.json", alive)
    live_other_shard = temporary("part-00001-of-00002-000001.parquet", alive)
    StoreWriter(tmp_path, shard_index=0, num_shards=2).close()
    assert not dead_other_shard.exists()
    assert not dead_store_file.exists()
    assert not own_shard.exists()
    assert not own_manifest.exists()
    assert live_other_shard.exists()  # a running writer of shard 1 may still commit it


def test_metadata_mismatch_names_the_innermost_value(tmp_path):
    identity = {"identity": {"weights": {"sam2.1-tiny": {"checkpoint_sha256": "aaa"}}}}
    StoreWriter(tmp_path, metadata=identity).close()
    other = {"identity": {"weights": {"sam2.1-tiny": {"checkpoint_sha256": "bbb"}}}}
    with pytest.raises(StoreError, match=r"identity\.weights\.sam2\.1-tiny\.checkpoint_sha256='aaa'.*'bbb'") as caught:
        StoreWriter(tmp_path, metadata=other)
    assert "new --out" in str(caught.value)


def test_store_of_an_older_usam_resumes_with_a_warning_for_unrecorded_keys(tmp_path):
    StoreWriter(tmp_path, metadata={"seed": 1}).close()
    newer = {"seed": 1, "identity": {"weights": "w"}}
    with pytest.warns(UsamWarning, match="did not record identity"):
        StoreWriter(tmp_path, metadata=newer, unchecked_if_missing=["identity"]).close()
    with pytest.raises(StoreError, match="identity"):
        StoreWriter(tmp_path, metadata=newer)  # keys not declared as possibly unrecorded must match
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UsamWarning)
        with pytest.raises(StoreError, match="seed=1"):
            StoreWriter(tmp_path, metadata={**newer, "seed": 2}, unchecked_if_missing=["identity"])
