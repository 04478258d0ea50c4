"""Tests for bat_app.images: every bad input, every mode conversion, duplicates, cropping.

Fixtures are built in tmp_path with Pillow; the DreamBench photos in ../shared/dreambench
(next to the repository) are used when present and skipped otherwise.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from bat_app.errors import ImageError, InputError
from bat_app.images import (
    DuplicateGroup,
    IntakeLimits,
    find_duplicates,
    load_user_images,
    open_user_image,
    perceptual_hash,
    prepare_for_training,
    to_rgb,
)

DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "dreambench"
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def photo(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A smooth random 'photo': distinct seeds give structurally different images."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "RGB")
    return coarse.resize(size, Image.Resampling.BICUBIC)


def save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


def file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def problem_of(excinfo: pytest.ExceptionInfo, name: str) -> str:
    assert name in str(excinfo.value), "the message must name the file"
    return excinfo.value.problems[name]


# --- limits -------------------------------------------------------------------------------

def test_limits_reject_inconsistent_or_non_positive_values():
    with pytest.raises(InputError, match=r"min_images \(5\) is larger than max_images \(2\)"):
        IntakeLimits(min_images=5, max_images=2)
    with pytest.raises(InputError, match=r"max_pixels must be a positive whole number \(got 0\)"):
        IntakeLimits(max_pixels=0)
    assert IntakeLimits(min_images=1, max_images=1).max_images == 1


# --- one file: bad inputs -----------------------------------------------------------------

def test_missing_file_is_named(tmp_path):
    with pytest.raises(ImageError) as excinfo:
        open_user_image(tmp_path / "nope.jpg")
    assert "not found" in problem_of(excinfo, "nope.jpg")


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError) as excinfo:
        open_user_image(tmp_path / "empty.png")
    assert "empty (0 bytes)" in problem_of(excinfo, "empty.png")


def test_text_file_renamed_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a photo\n" * 20)
    with pytest.raises(ImageError) as excinfo:
        open_user_image(tmp_path / "notes.jpg")
    reason = problem_of(excinfo, "notes.jpg")
    assert "not an image file" in reason and "re-save it as JPEG or PNG" in reason


def test_heic_gets_an_export_hint():
    fake_heic = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64
    with pytest.raises(ImageError) as excinfo:
        open_user_image(fake_heic, name="IMG_0001.HEIC")
    assert "Export it as JPEG" in problem_of(excinfo, "IMG_0001.HEIC")


def test_truncated_jpeg_is_rejected_even_if_pillow_was_told_to_allow_it(tmp_path, monkeypatch):
    data = io.BytesIO()
    photo(1, (256, 256)).save(data, "JPEG", quality=95)
    (tmp_path / "cut.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    # Some other library may have flipped this global; intake must not depend on it.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError) as excinfo:
        open_user_image(tmp_path / "cut.jpg")
    assert "truncated" in problem_of(excinfo, "cut.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "the global must be restored"


def test_file_over_byte_limit(tmp_path):
    path = save(photo(2), tmp_path / "big.png")
    assert path.stat().st_size > 2000
    limits = IntakeLimits(max_file_bytes=2000)
    with pytest.raises(ImageError) as excinfo:
        open_user_image(path, limits=limits)
    assert "limit is 2.0 KB" in problem_of(excinfo, "big.png")
    with pytest.raises(ImageError, match="raise max_file_bytes"):
        open_user_image(path.read_bytes(), name="upload.png", limits=limits)


@pytest.mark.parametrize("size", [(120, 100), (200, 200)])  # 1-2x and >2x Pillow's limit
def test_pixel_limit_rejects_before_decoding_and_restores_global(tmp_path, size):
    before = Image.MAX_IMAGE_PIXELS
    path = save(Image.new("RGB", size), tmp_path / "wide.png")
    with pytest.raises(ImageError) as excinfo:
        open_user_image(path, limits=IntakeLimits(max_pixels=10_000))
    reason = problem_of(excinfo, "wide.png")
    assert f"{size[0] * size[1]:,} pixels" in reason and "raise max_pixels" in reason
    assert Image.MAX_IMAGE_PIXELS == before


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: a decompression bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_decompression_bomb_header_with_default_limits():
    bomb = png_header_only(100_000, 100_000)
    assert len(bomb) < 200
    with pytest.raises(ImageError) as excinfo:
        open_user_image(bomb, name="bomb.png")
    assert "10,000,000,000 pixels" in problem_of(excinfo, "bomb.png")


def test_too_small_image(tmp_path):
    path = save(photo(3, (200, 20)), tmp_path / "strip.png")
    with pytest.raises(ImageError) as excinfo:
        open_user_image(path)
    reason = problem_of(excinfo, "strip.png")
    assert "200x20" in reason and "at least 32 px" in reason


def test_open_rejects_non_path_source():
    with pytest.raises(InputError, match="got int"):
        open_user_image(42)


# --- one file: conversions ----------------------------------------------------------------

def test_rgba_transparent_area_becomes_white(tmp_path):
    image = Image.new("RGBA", (100, 100), (255, 0, 0, 0))  # invisible red
    image.paste((0, 0, 255, 255), (50, 0, 100, 100))
    user = open_user_image(save(image, tmp_path / "cutout.png"))
    assert (user.image.mode, user.original_mode) == ("RGB", "RGBA")
    assert user.image.getpixel((10, 50)) == WHITE
    assert user.image.getpixel((90, 50)) == BLUE
    assert any("filled with white" in w for w in user.warnings)


def test_palette_with_transparency_becomes_white(tmp_path):
    image = Image.new("P", (80, 80), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 black, index 1 green
    image.paste(1, (40, 0, 80, 80))
    user = open_user_image(save(image, tmp_path / "logo.png", transparency=0))
    assert user.original_mode == "P"
    assert user.image.getpixel((5, 5)) == WHITE  # transparent black -> white, not black
    assert user.image.getpixel((70, 5)) == GREEN


def test_gray_with_alpha(tmp_path):
    image = Image.new("LA", (80, 80), (30, 0))
    image.paste((90, 255), (40, 0, 80, 80))
    user = open_user_image(save(image, tmp_path / "la.png"))
    assert user.image.getpixel((5, 5)) == WHITE
    assert user.image.getpixel((70, 5)) == (90, 90, 90)
    assert any("grayscale" in w for w in user.warnings)


def test_cmyk_jpeg(tmp_path):
    user = open_user_image(save(Image.new("CMYK", (80, 80), (0, 255, 255, 0)),
                                tmp_path / "print.jpg", quality=95))
    assert user.original_mode == "CMYK" and user.image.mode == "RGB"
    red, green, blue = user.image.getpixel((40, 40))
    assert red > 220 and green < 40 and blue < 40
    assert any("CMYK" in w for w in user.warnings)


def test_16_bit_gradient_keeps_its_range(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    user = open_user_image(save(Image.fromarray(ramp), tmp_path / "scan16.png"))
    assert user.original_mode.startswith("I")
    row = np.asarray(user.image)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and abs(row[128] - 128) <= 2
    assert (np.diff(row) >= 0).all(), "a ramp must stay a ramp"
    assert (row == 255).sum() <= 2, "16-bit values must be scaled, not clipped to white"


def test_float_and_32_bit_images_are_scaled():
    image = Image.fromarray(np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10), "F")
    rgb, notes = to_rgb(image)
    assert rgb.getextrema() == ((0, 255),) * 3
    assert notes and "grayscale" in notes[0]
    signed = Image.fromarray(np.linspace(-1000, 1000, 100).astype(np.int32).reshape(10, 10))
    assert to_rgb(signed)[0].getextrema() == ((0, 255),) * 3
    flat = Image.fromarray(np.full((10, 10), -7, dtype=np.int32))
    assert to_rgb(flat)[0].getextrema() == ((0, 0),) * 3


def test_grayscale_l(tmp_path):
    user = open_user_image(save(Image.new("L", (70, 70), 77), tmp_path / "gray.png"))
    assert user.image.mode == "RGB" and user.image.getpixel((3, 3)) == (77, 77, 77)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (160, 80), RED)
    image.paste(BLUE, (80, 0, 160, 80))  # left red, right blue as stored
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    user = open_user_image(save(image, tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95))
    assert user.original_size == (160, 80)
    assert user.image.size == (80, 160)
    top, bottom = user.image.getpixel((40, 10)), user.image.getpixel((40, 150))
    assert top[0] > 200 and top[2] < 50, "stored left (red) must end up on top"
    assert bottom[2] > 200 and bottom[0] < 50


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (80, 80), colour) for colour in (RED, BLUE)]
    path = save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    user = open_user_image(path)
    assert user.image.getpixel((40, 40)) == RED
    assert any("2 frames" in w and "first frame" in w for w in user.warnings)


def test_bytes_source_and_sha256(tmp_path):
    data = save(photo(4), tmp_path / "a.png").read_bytes()
    user = open_user_image(data)
    assert (user.name, user.source) == ("upload", None)
    assert user.sha256 == hashlib.sha256(data).hexdigest()
    assert user.image.size == (160, 120)


# --- batches ------------------------------------------------------------------------------

def make_folder(folder: Path, count: int, size=(160, 120), fmt="png") -> Path:
    folder.mkdir(exist_ok=True)
    for i in range(count):
        save(photo(100 + i, size), folder / f"{i:02d}.{fmt}")
    return folder


def test_folder_expands_sorted_and_skips_sidecars(tmp_path):
    folder = make_folder(tmp_path / "dog", 3)
    (folder / "00.txt").write_text("a photo of sks dog")
    (folder / "meta.json").write_text("{}")
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")
    (folder / "old").mkdir()
    report = load_user_images(folder)
    assert [u.name for u in report.images] == ["00.png", "01.png", "02.png"]
    assert all(u.source.parent == folder for u in report.images)
    assert report.duplicates == []
    assert any(w.startswith("old: is a folder") for w in report.warnings)


def test_all_problems_reported_together_and_files_untouched(tmp_path):
    folder = make_folder(tmp_path / "mixed", 4)
    (folder / "bad.jpg").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.docx").write_bytes(b"PK\x03\x04 word document")
    save(photo(5, (30, 30)), folder / "tiny.png")
    before = file_digests(folder)
    with pytest.raises(ImageError) as excinfo:
        load_user_images(folder)
    error = excinfo.value
    assert set(error.problems) == {"bad.jpg", "empty.png", "notes.docx", "tiny.png"}
    message = str(error)
    assert message.startswith("4 files of 8 cannot be used:")
    assert "the other 4 are fine" in message
    for name, reason in error.problems.items():
        assert f"  - {name}: {reason}" in message
    assert file_digests(folder) == before, "intake must never modify the user's files"


def test_too_few_images_exact_message(tmp_path):
    with pytest.raises(ImageError) as excinfo:
        load_user_images(make_folder(tmp_path / "two", 2))
    assert str(excinfo.value) == ("Got 2 images; at least 3 are needed for a reliable "
                                  "subject LoRA. Add 1 more image.")


def test_too_many_images_exact_message(tmp_path):
    with pytest.raises(ImageError) as excinfo:
        load_user_images(make_folder(tmp_path / "many", 14, size=(64, 64)))
    assert str(excinfo.value) == ("Got 14 images; at most 10 are used. Remove 4 images or "
                                  "raise the limit (--max-images).")


def test_bad_file_that_leaves_too_few_says_both(tmp_path):
    folder = make_folder(tmp_path / "three", 3)
    (folder / "01.png").write_bytes(b"")
    with pytest.raises(ImageError) as excinfo:
        load_user_images(folder)
    assert list(excinfo.value.problems) == ["01.png"]
    assert str(excinfo.value).endswith("Without them, got 2 images; at least 3 are needed "
                                       "for a reliable subject LoRA. Add 1 more image.")


def test_missing_path_in_list_and_clashing_names(tmp_path):
    first, second = make_folder(tmp_path / "a", 2), make_folder(tmp_path / "b", 1)
    report = load_user_images([first, second / "00.png"])
    assert [u.name for u in report.images] == [str(first / "00.png"), "01.png",
                                               str(second / "00.png")]
    with pytest.raises(ImageError) as excinfo:
        load_user_images([first, tmp_path / "gone.jpg"])
    assert "not found" in excinfo.value.problems["gone.jpg"]


def test_upscale_warning_for_small_images(tmp_path):
    report = load_user_images(make_folder(tmp_path / "small", 3), resolution=128)
    upscaled = [w for w in report.warnings if "will be upscaled" in w]
    assert len(upscaled) == 3 and upscaled[0].startswith("00.png: is 160x120")
    assert not any("upscaled" in w for w in load_user_images(tmp_path / "small",
                                                             resolution=64).warnings)
    with pytest.raises(InputError, match="divisible by 8"):
        load_user_images(tmp_path / "small", resolution=100)


# --- duplicates ---------------------------------------------------------------------------

def test_exact_duplicates_by_bytes_and_by_pixels(tmp_path):
    folder = make_folder(tmp_path / "dups", 3)
    shutil.copy(folder / "00.png", folder / "00 copy.png")
    # Same pixels, different bytes: a re-save with other compression settings.
    Image.open(folder / "01.png").save(folder / "01 resaved.png", compress_level=0)
    assert (folder / "01 resaved.png").read_bytes() != (folder / "01.png").read_bytes()
    report = load_user_images(folder)
    assert report.duplicates == [DuplicateGroup("exact", ["00 copy.png", "00.png"]),
                                 DuplicateGroup("exact", ["01 resaved.png", "01.png"])]
    assert sum("exact duplicates" in w for w in report.warnings) == 2


def test_near_duplicate_resized_reencoded_copy(tmp_path):
    folder = make_folder(tmp_path / "near", 3, size=(320, 240), fmt="jpg")
    original = Image.open(folder / "01.jpg")
    original.resize((160, 120), Image.Resampling.LANCZOS).save(folder / "01_small.jpg",
                                                               quality=60)
    report = load_user_images(folder)
    assert report.duplicates == [DuplicateGroup("near", ["01.jpg", "01_small.jpg"])]
    assert any(w.startswith("01.jpg, 01_small.jpg look almost the same") for w in report.warnings)


def test_flat_images_of_different_colours_are_not_near_duplicates(tmp_path):
    # All flat images share one pHash; the colour check must keep them apart.
    paths = [save(Image.new("RGB", (100, 100), c), tmp_path / f"{i}.png")
             for i, c in enumerate([RED, BLUE, WHITE])]
    images = [open_user_image(p) for p in paths]
    assert len({tuple(perceptual_hash(u.image)) for u in images}) == 1
    assert find_duplicates(images) == []


def test_find_duplicates_validates_threshold():
    with pytest.raises(InputError, match="near_threshold"):
        find_duplicates([], near_threshold=64)
    assert perceptual_hash(photo(7)).shape == (64,)


# --- cropping -----------------------------------------------------------------------------

def test_prepare_for_training_crops_the_centre():
    wide = Image.new("RGB", (300, 100), RED)
    wide.paste(GREEN, (100, 0, 200, 100))
    wide.paste(BLUE, (200, 0, 300, 100))
    out = prepare_for_training(wide, 64)
    assert (out.size, out.mode) == ((64, 64), "RGB")
    assert out.getextrema() == ((0, 0), (255, 255), (0, 0)), "only the green centre remains"

    tall = Image.new("RGB", (50, 150), RED)
    tall.paste(GREEN, (0, 50, 50, 100))
    assert prepare_for_training(tall, 48).getextrema() == ((0, 0), (255, 255), (0, 0))


def test_prepare_for_training_upscales_and_flattens_alpha():
    cutout = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    out = prepare_for_training(cutout, 64)
    assert (out.size, out.mode) == ((64, 64), "RGB")
    assert out.getpixel((32, 32)) == WHITE


@pytest.mark.parametrize("bad", [0, 4, 100, 512.0, True])
def test_prepare_for_training_rejects_bad_resolution(bad):
    with pytest.raises(InputError, match=repr(bad).replace(".", r"\.")):
        prepare_for_training(Image.new("RGB", (64, 64)), bad)


# --- real photos --------------------------------------------------------------------------

def dreambench_subjects() -> list[Path]:
    if not DREAMBENCH.is_dir():
        pytest.skip(f"DreamBench photos not found at {DREAMBENCH}")
    subjects = sorted(p for p in DREAMBENCH.iterdir() if p.is_dir())
    return subjects or pytest.skip(f"no subject folders in {DREAMBENCH}")


def test_real_photos_load_and_are_not_near_duplicates():
    for subject in dreambench_subjects():
        report = load_user_images(subject, resolution=512)
        assert len(report.images) >= 3, subject
        for user in report.images:
            assert user.image.mode == "RGB" and min(user.image.size) >= 512
        assert report.duplicates == [], f"different {subject.name} photos flagged as duplicates"
        assert find_duplicates(report.images, near_threshold=12) == [], \
            "real photos must sit well clear of the default threshold"


def test_real_photo_half_size_reencode_is_a_near_duplicate(tmp_path):
    subject = dreambench_subjects()[0]
    first = sorted(subject.glob("*.jpg"))[0]
    original = Image.open(first)
    copy = original.resize((original.width // 2, original.height // 2),
                           Image.Resampling.LANCZOS)
    copy.save(tmp_path / "copy.jpg", quality=70)
    sources = sorted(subject.glob("*.jpg")) + [tmp_path / "copy.jpg"]
    report = load_user_images(sources)
    assert report.duplicates == [DuplicateGroup("near", [first.name, "copy.jpg"])]


def test_intake_and_duplicates_do_not_import_each_other():
    from bat_app.testing import module_imports

    intake, duplicates = "bat_app.images.intake", "bat_app.images.duplicates"
    assert duplicates in module_imports(intake)  # intake runs duplicate detection...
    assert not any(name.startswith(intake) for name in module_imports(duplicates))  # ...not the reverse


def test_one_pixel_hash_and_one_list_of_decode_errors():
    from bat_app import images
    from bat_app.images import decode, duplicates, user_image

    red = Image.new("RGB", (4, 4), "red")
    assert images.pixel_digest(red) == images.pixel_digest(red.copy()) != images.pixel_digest(red.convert("L"))
    assert duplicates.pixel_digest is user_image.pixel_digest
    assert images.DECODE_ERRORS is decode.DECODE_ERRORS and Image.DecompressionBombError in images.BOMB_ERRORS
