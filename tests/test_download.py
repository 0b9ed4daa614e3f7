import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from icapnet import download as download_cli
from icapnet.data import download
from icapnet.data.datasets import load_dataset
from icapnet.errors import IcapnetError, run_cli


@pytest.fixture
def server(http_server):
    """The local HTTP server of conftest.py (Range support, fault injection)."""
    return http_server


def _payload(n: int = 300_000) -> bytes:
    return bytes((i * 7919) % 251 for i in range(n))


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _flickr_zips(names=("11_a.jpg", "12_b.jpg", "13_c.jpg")) -> dict[str, bytes]:
    images = io.BytesIO()
    with zipfile.ZipFile(images, "w") as zf:
        for n in names:
            zf.writestr(f"Flicker8k_Dataset/{n}", _jpeg())
        zf.writestr("__MACOSX/Flicker8k_Dataset/._11_a.jpg", b"junk")
    text = io.BytesIO()
    with zipfile.ZipFile(text, "w") as zf:
        token = "".join(f"{n}#{k}\tA photo number {k} .\n" for n in names for k in range(5))
        zf.writestr("Flickr8k.token.txt", token)
        zf.writestr("Flickr_8k.trainImages.txt", names[0] + "\n")
        zf.writestr("Flickr_8k.devImages.txt", names[1] + "\n")
        zf.writestr("Flickr_8k.testImages.txt", names[2] + "\n")
    return {"Flickr8k_Dataset.zip": images.getvalue(), "Flickr8k_text.zip": text.getvalue()}


def test_resumes_from_part_file_with_range_request(server, tmp_path):
    data = _payload()
    server.files["big.bin"] = data
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(data[:100_000])
    digest = download.download_file(server.url + "big.bin", dest, progress=False)
    assert server.ranges == ["bytes=100000-"]
    assert dest.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "big.bin.sha256").read_text().split()[0] == digest
    assert not (tmp_path / "big.bin.part").exists()


def test_interrupted_transfer_is_resumed_on_retry(server, tmp_path):
    data = _payload()
    server.files["big.bin"] = data
    server.cut_first_response_at = 123_456
    expected = hashlib.sha256(data).hexdigest()
    digest = download.download_file(
        server.url + "big.bin", tmp_path / "x", expected, progress=False
    )
    assert digest == expected and (tmp_path / "x").read_bytes() == data
    assert server.ranges == [None, "bytes=123456-"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = _payload()
    server.files["big.bin"] = data
    server.ignore_range = True
    (tmp_path / "x.part").write_bytes(b"garbage that must be overwritten")
    download.download_file(server.url + "big.bin", tmp_path / "x", progress=False)
    assert (tmp_path / "x").read_bytes() == data


def test_complete_part_file_and_existing_file(server, tmp_path):
    data = _payload(5000)
    server.files["f"] = data
    (tmp_path / "f.part").write_bytes(data)  # complete but not yet renamed -> 416 from server
    download.download_file(server.url + "f", tmp_path / "f", progress=False)
    assert (tmp_path / "f").read_bytes() == data
    server.ranges.clear()
    download.download_file(server.url + "f", tmp_path / "f", progress=False)
    assert server.ranges == []  # reused, no request


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    server.files["f"] = _payload(5000)
    with pytest.raises(IcapnetError, match="SHA-256 mismatch"):
        download.download_file(server.url + "f", tmp_path / "f", "0" * 64, progress=False)
    assert not (tmp_path / "f").exists() and not (tmp_path / "f.part").exists()


def test_http_404_is_an_error(server, tmp_path):
    with pytest.raises(IcapnetError, match="HTTP 404"):
        download.download_file(server.url + "nope.zip", tmp_path / "n", progress=False)


def test_fetch_flickr8k_from_url_folder_with_checksums(server, tmp_path):
    server.files.update(_flickr_zips())
    sums = [f"{n}={hashlib.sha256(b).hexdigest()}" for n, b in server.files.items()]
    names = download.archive_names(server.url)
    assert names == list(download.FLICKR8K_ARCHIVES)
    data_dir = download.fetch_flickr8k(
        tmp_path / "d", server.url, download.parse_checksums(sums, names), progress=False
    )
    ds = load_dataset("flickr8k", data_dir)
    assert ds.splits == {"train": ["11_a.jpg"], "val": ["12_b.jpg"], "test": ["13_c.jpg"]}
    assert (data_dir / "downloads" / "Flickr8k_Dataset.zip").is_file()
    assert not (data_dir / "__MACOSX").exists()
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".")]  # no temp leftovers
    # already present: nothing is requested again
    server.ranges.clear()
    download.fetch_flickr8k(data_dir, server.url, progress=False)
    assert server.ranges == []


def test_fetch_rejects_wrong_checksum_for_url(server, tmp_path):
    server.files.update(_flickr_zips())
    sums = download.parse_checksums([f"Flickr8k_text.zip={'ab' * 32}"], ["Flickr8k_text.zip"])
    with pytest.raises(IcapnetError, match=r"Flickr8k_text\.zip: SHA-256 mismatch"):
        download.fetch_flickr8k(tmp_path / "d", server.url, sums, progress=False)
    assert not (tmp_path / "d" / "Flicker8k_Dataset").exists()  # nothing unpacked
    assert not (tmp_path / "d" / "downloads" / "Flickr8k_text.zip").exists()


def test_local_kaggle_tar_gz_and_unpacked_folder(tmp_path):
    src = tmp_path / "kaggle"
    (src / "Images").mkdir(parents=True)
    (src / "Images" / "1_a.jpg").write_bytes(_jpeg())
    (src / "Images" / "2_b.jpg").write_bytes(_jpeg())
    (src / "captions.txt").write_text("image,caption\n1_a.jpg,A cat .\n2_b.jpg,A dog .\n")
    archive = tmp_path / "archive.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "Images", arcname="Images")
        tf.add(src / "captions.txt", arcname="captions.txt")
    d1 = download.fetch_flickr8k(tmp_path / "d1", str(archive), progress=False)
    assert sorted(load_dataset("flickr8k", d1, split="random").images) == ["1_a.jpg", "2_b.jpg"]
    d2 = download.fetch_flickr8k(tmp_path / "d2", str(src), progress=False)
    assert (d2 / "Images" / "1_a.jpg").read_bytes() == (src / "Images" / "1_a.jpg").read_bytes()


def test_zip_slip_is_rejected(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", b"x")
    with pytest.raises(IcapnetError, match="unsafe path"):
        download.unpack_archive(evil, tmp_path / "d")
    assert not (tmp_path / "outside.txt").exists()


def test_cli_local_archives_folder_and_errors(tmp_path, capsys):
    folder = tmp_path / "archives"
    folder.mkdir()
    for name, data in _flickr_zips().items():
        (folder / name).write_bytes(data)
    argv = ["--data-dir", str(tmp_path / "d"), "--source", str(folder), "--quiet"]
    assert download_cli.main(argv) == 0
    assert "3 images" in capsys.readouterr().out
    bad = ["--data-dir", str(tmp_path / "e"), "--source", str(tmp_path / "missing.zip")]
    assert run_cli(download_cli.main, bad) == 2
    assert "missing.zip" in capsys.readouterr().err
    one = ["--data-dir", str(tmp_path / "e"), "--source", str(folder), "--sha256", "ab" * 32]
    assert run_cli(download_cli.main, one) == 2
    assert "NAME=HEX" in capsys.readouterr().err


def test_parse_checksums():
    assert download.parse_checksums(["AB" * 32], ["x.zip"]) == {"x.zip": "ab" * 32}
    with pytest.raises(IcapnetError, match="64-digit"):
        download.parse_checksums(["x.zip=123"], ["x.zip"])
    assert Path(download.FLICKR8K_BASE_URL).name == "Flickr8k"
