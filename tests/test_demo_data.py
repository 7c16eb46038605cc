"""The demo folder: declared files, byte-for-byte determinism, and verdicts matching the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lightly_tasks import demo_data
from lightly_tasks.corruptness import check_image, content_hash
from lightly_tasks.demo_data import DemoManifest, add_images, build_demo_folder

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def _snapshot(root: Path) -> dict[str, str]:
    """Relative key -> sha256 of every file under `root`."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoManifest]:
    root = tmp_path_factory.mktemp("demo")
    return root, build_demo_folder(root)


def test_folder_holds_exactly_the_declared_files(demo: tuple[Path, DemoManifest]) -> None:
    root, manifest = demo
    assert len(manifest.real) == 48
    assert set(_snapshot(root)) == set(manifest.all_keys())
    assert len(manifest.all_keys()) == len(set(manifest.all_keys()))
    assert set(manifest.broken) == set(demo_data.BROKEN)
    assert manifest.convertible == list(demo_data.CONVERTIBLE)
    folders = {key.rsplit("/", 1)[0] for key in manifest.real}
    assert {"animals/cats", "objects/kitchen", "nature/été 2024"} <= folders
    assert any(" " in key and not key.isascii() for key in manifest.real)


def test_real_images_are_distinct_varied_and_pass(demo: tuple[Path, DemoManifest]) -> None:
    root, manifest = demo
    hashes, formats, sizes = set(), set(), []
    for key in manifest.real:
        data = (root / key).read_bytes()
        check = check_image(data)
        assert check.ok, (key, check.reason)
        assert check.image is not None and check.image.mode == "RGB"
        hashes.add(content_hash(data))
        formats.add(check.format)
        sizes.append(max(check.image.size))
    assert len(hashes) == len(manifest.real)
    assert formats == {"JPEG", "PNG"}
    assert min(sizes) >= demo_data.MIN_SIDE and max(sizes) <= demo_data.MAX_SIDE
    assert max(sizes) - min(sizes) > 200


def test_duplicate_is_byte_identical(demo: tuple[Path, DemoManifest]) -> None:
    root, manifest = demo
    [(duplicate, original)] = manifest.duplicates
    assert duplicate != original and original in manifest.real
    assert (root / duplicate).read_bytes() == (root / original).read_bytes()


def test_broken_files_fail_with_the_declared_reason(demo: tuple[Path, DemoManifest]) -> None:
    root, manifest = demo
    for key, prefix in manifest.broken.items():
        check = check_image((root / key).read_bytes())
        assert not check.ok, key
        assert check.reason is not None and check.reason.startswith(prefix), (key, check.reason)
    assert (root / "space/deep_field_huge.png").stat().st_size < 20_000


def test_convertible_files_pass(demo: tuple[Path, DemoManifest]) -> None:
    root, manifest = demo
    modes = set()
    for key in manifest.convertible:
        check = check_image((root / key).read_bytes())
        assert check.ok, (key, check.reason)
        assert check.image is not None and check.image.mode == "RGB"
        modes.add(check.original_mode)
    assert {"CMYK", "I;16", "P", "RGBA", "L"} <= modes


def test_build_is_deterministic(demo: tuple[Path, DemoManifest], tmp_path: Path) -> None:
    root, manifest = demo
    again = build_demo_folder(tmp_path)
    assert again == manifest
    assert _snapshot(tmp_path) == _snapshot(root)


def test_seed_changes_the_crops(tmp_path: Path) -> None:
    first = build_demo_folder(tmp_path / "a", n_images=6, seed=1)
    second = build_demo_folder(tmp_path / "b", n_images=6, seed=2)
    hashes_a = {content_hash((tmp_path / "a" / key).read_bytes()) for key in first.real}
    hashes_b = {content_hash((tmp_path / "b" / key).read_bytes()) for key in second.real}
    assert not hashes_a & hashes_b


def test_second_batch_is_new_content(demo: tuple[Path, DemoManifest], tmp_path: Path) -> None:
    root, manifest = demo
    keys = add_images(tmp_path / "one", n_images=10, seed=0)
    assert len(keys) == 10 and all(key.startswith("batch2/") for key in keys)
    assert set(_snapshot(tmp_path / "one")) == set(keys)
    first_batch = {content_hash((root / key).read_bytes()) for key in manifest.real}
    for key in keys:
        data = (tmp_path / "one" / key).read_bytes()
        assert check_image(data).ok
        assert content_hash(data) not in first_batch
    assert add_images(tmp_path / "two", n_images=10, seed=0) == keys
    assert _snapshot(tmp_path / "two") == _snapshot(tmp_path / "one")
    assert add_images(tmp_path / "three", n_images=2, seed=0, subdir="day 3")[0].startswith("day 3/")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_data.main([str(tmp_path), "--n", "3", "--seed", "5"]) == 0
    assert "wrote 3 real images" in capsys.readouterr().out
    assert demo_data.main([str(tmp_path / "json"), "--n", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["real"] == build_demo_folder(tmp_path / "check", n_images=2).real
