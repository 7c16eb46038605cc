"""Frame sample names and sequence selection over frames (``selected_sequence_length``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lightly_tasks.frame_names import frame_key, parse_frame_key
from lightly_tasks.selection import StoppingCondition
from lightly_tasks.sequences import select_sequences, sequence_ids, sequence_information


def test_frame_names_follow_the_lightly_worker() -> None:
    assert frame_key("street_01.mp4", 42) == "street_01-000042-mp4.png"
    assert frame_key("cams/north/street_01.mp4", 7) == "cams/north/street_01-000007-mp4.png"
    assert frame_key("a-b.c.mkv", 1234567) == "a-b.c-1234567-mkv.png"
    for video, index in [("cams/street_01.mp4", 42), ("a-b.c.mkv", 3), ("x.webm", 0)]:
        assert parse_frame_key(frame_key(video, index)) == (video, index)
    with pytest.raises(ValueError):
        parse_frame_key("cams/photo.png")


def _frames(lengths: dict[str, int], stride: int = 1) -> pd.DataFrame:
    rows = [
        {"key": frame_key(v, i), "video_key": v, "frame_index": i, "frame_pts": i * 512, "frame_time": i / 30}
        for v, n in lengths.items()
        for i in range(0, n, stride)
    ]
    rows.append(
        {
            "key": "broken.mp4",
            "video_key": "broken.mp4",
            "frame_index": -1,
            "frame_pts": None,
            "frame_time": None,
        }
    )
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_sequence_ids_split_each_video_into_runs() -> None:
    frames = _frames({"a.mp4": 10, "b.mp4": 6}, stride=2)  # a: 5 sampled frames, b: 3
    ids = sequence_ids(frames, 2)
    frames = frames.assign(sequence=ids)
    assert frames.loc[frames["key"] == "broken.mp4", "sequence"].item() == -1
    groups = frames[ids >= 0].groupby("sequence")["frame_index"].apply(sorted).tolist()
    assert sorted(groups) == sorted([[0, 2], [4, 6], [8], [0, 2], [4]])
    assert frames[ids >= 0].groupby("sequence")["video_key"].nunique().eq(1).all()


def _vectors(keys: list[str], rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(len(keys), 8)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_whole_sequences_are_selected() -> None:
    frames = _frames({"a.mp4": 12, "b.mp4": 10})
    candidates = sorted(k for k in frames["key"] if k != "broken.mp4" and k != frame_key("a.mp4", 5))
    vectors = _vectors(candidates, np.random.default_rng(1))
    picked = select_sequences(
        frames, candidates, vectors, existing=None, stop=StoppingCondition(n_samples=8), length=4
    )
    keys = [candidates[i] for i in picked.indices]
    assert len(keys) == 8 and picked.stopped_by == "n_samples"
    chosen = [keys[i : i + 4] for i in range(0, 8, 4)]
    for sequence in chosen:
        video, first = parse_frame_key(sequence[0])
        assert first % 4 == 0
        assert sequence == [frame_key(video, first + j) for j in range(4)]
    assert frame_key("a.mp4", 4) not in keys, "a sequence with a non-candidate frame is never selected"
    assert not any(parse_frame_key(k) == ("b.mp4", 8) for k in keys), (
        "an incomplete last sequence is never selected"
    )
    assert len(set(picked.distances[:4])) == 1


def test_proportion_rounds_up_to_whole_sequences_and_existing_centres_count() -> None:
    frames = _frames({"a.mp4": 20})
    candidates = sorted(frames.loc[frames["frame_index"] >= 0, "key"])
    vectors = _vectors(candidates, np.random.default_rng(2))
    picked = select_sequences(
        frames, candidates, vectors, existing=None, stop=StoppingCondition(proportion_samples=0.3), length=5
    )
    assert len(picked.indices) == 10  # 0.3 * 20 = 6 frames -> 2 sequences of 5
    # an existing sample identical to the first sequence's mean makes that sequence the last pick
    first = vectors[:5].mean(axis=0)
    existing = (first / np.linalg.norm(first))[None, :]
    ranked = select_sequences(
        frames, candidates, vectors, existing=existing, stop=StoppingCondition(n_samples=20), length=5
    )
    assert [candidates[i] for i in ranked.indices[-5:]] == candidates[:5]
    assert ranked.distances[-1] == pytest.approx(0.0, abs=1e-5)


def test_sequence_information_lists_each_selected_sequence() -> None:
    selected = pd.DataFrame(
        {
            "key": [frame_key("a.mp4", i) for i in (4, 5, 0, 1)],
            "video_key": "a.mp4",
            "frame_index": [4, 5, 0, 1],
            "frame_pts": [2048, 2560, 0, 512],
            "frame_time": [4 / 30, 5 / 30, 0.0, 1 / 30],
            "order": [0, 1, 2, 3],
        }
    )
    info = sequence_information(selected, 2)
    assert info == [
        {
            "video_name": "a.mp4",
            "frame_names": ["a-000004-mp4.png", "a-000005-mp4.png"],
            "frame_indices": [4, 5],
            "frame_timestamps_pts": [2048, 2560],
            "frame_timestamps_sec": [4 / 30, 5 / 30],
        },
        {
            "video_name": "a.mp4",
            "frame_names": ["a-000000-mp4.png", "a-000001-mp4.png"],
            "frame_indices": [0, 1],
            "frame_timestamps_pts": [0, 512],
            "frame_timestamps_sec": [0.0, 1 / 30],
        },
    ]
    assert len(sequence_information(selected, 1)) == 4
    assert sequence_information(selected.iloc[:0], 2) == []
