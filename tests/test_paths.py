"""What a user gives is never harmed: every command's outputs against every input it reads, device nodes, odd names.

The overlap test walks each command's path options exhaustively (every output option set to every input, through
the same path, a symlink and a hard link, and every pair of outputs set to one file) and checks, on real files,
that the command exits 2 with one line naming the output and that no input changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastinst_rt.cli import main
from fastinst_rt.io.outputs import OutputError, atomic_path, write_atomic
from fastinst_rt.io.paths import Read, Write, check_paths

from .conftest import TEST_VARIANTS

VARIANT = TEST_VARIANTS[0]


@dataclass
class Inputs:
    """Real input files of every kind a command reads, in one folder."""

    model: Path
    image: Path
    gt: Path
    coco: Path
    images: Path  # a folder of images (eval --images, export --calib)

    def digest(self) -> str:
        h = hashlib.sha256()
        for p in sorted([self.model, self.image, self.gt, self.coco, *self.images.rglob("*")]):
            h.update(str(p).encode() + (p.read_bytes() if p.is_file() else b"/"))
        return h.hexdigest()


@pytest.fixture
def inputs(tiny_checkpoints, photo, tmp_path: Path) -> Inputs:
    root = tmp_path / "in"
    (root / "images").mkdir(parents=True)
    model = root / "model.safetensors"
    shutil.copyfile(tiny_checkpoints[VARIANT], model)
    image = root / "photo.png"
    Image.fromarray(photo).save(image)
    Image.fromarray(photo).save(root / "images" / "a.png")
    gt = root / "gt.txt"
    gt.write_text("1,1,10,10,20,20,1,-1,-1,-1\n")
    coco = root / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 512, "width": 512}],
                                "annotations": [], "categories": [{"id": 1, "name": "x"}]}))  # fmt: skip
    return Inputs(model, image, gt, coco, root / "images")


# Each command's path options: (argv with {placeholders} of the inputs, the input options with the attribute of
# ``Inputs`` they name, the file output options, the folder output options).
COMMANDS = {
    "predict": ("predict {image} -m {model} -q", {"-m": "model", "source": "image"}, ["--json"], ["--save"]),
    "track": ("track {image} -m {model} -q --gt {gt} --mot {out}/m.txt",
              {"-m": "model", "source": "image", "--gt": "gt"}, ["--json", "--mot"], ["--save"]),
    "eval": ("eval {model} --coco-json {coco} --images {images} -q", {"model": "model", "--coco-json": "coco",
             "--images": "images"}, ["--json"], []),
    "bench": ("bench {model} --image {image} --iters 1 --warmup 0", {"model": "model", "--image": "image"},
              ["--json", "--plot"], []),
    "export": ("export {model} -o {out}/m.onnx --calib {images}", {"model": "model", "--calib": "images"},
               ["-o"], []),
}  # fmt: skip


def _argv(command: str, inputs: Inputs, out: Path, **outputs: str) -> list[str]:
    template = COMMANDS[command][0]
    argv = template.format(out=out, **{k: v for k, v in vars(inputs).items()}).split()
    for option, value in outputs.items():
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    return argv


def _cases(command: str, inputs: Inputs, tmp_path: Path) -> list[dict[str, str]]:
    """Every way an output option of ``command`` can land on one of its inputs or on another output."""
    _, reads, files, folders = COMMANDS[command]
    links = tmp_path / "links"
    links.mkdir(exist_ok=True)
    cases = []
    for attr in reads.values():
        target = getattr(inputs, attr)
        if target.is_dir():
            cases += [{o: str(target / "out.json")} for o in files] + [{o: str(target / "sub")} for o in folders]
            continue
        symlink, hardlink = links / f"sym-{target.name}", links / f"hard-{target.name}"
        if not symlink.exists():
            symlink.symlink_to(target)
            os.link(target, hardlink)
        cases += [{o: str(p)} for o in files for p in (target, symlink, hardlink)]
        cases += [{o: str(target.parent)} for o in folders]  # a folder that holds an input
    cases += [{a: str(tmp_path / "same.txt"), b: str(tmp_path / "same.txt")} for a in files for b in files if a < b]
    cases += [{f: str(tmp_path / "o" / "photo.png"), d: str(tmp_path / "o")} for f in files for d in folders]
    return cases


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_output_option_can_land_on_an_input_or_another_output(command, inputs, tmp_path, capsys) -> None:
    before = inputs.digest()
    out = tmp_path / "out"
    cases = _cases(command, inputs, tmp_path)
    assert cases
    for outputs in cases:
        argv = _argv(command, inputs, out, **outputs)
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and any(o in err[0] for o in outputs), (argv, err)
        assert inputs.digest() == before, argv
    assert not (tmp_path / "same.txt").exists() and not out.exists()


def test_outputs_beside_inputs_that_do_not_collide_are_allowed(inputs, tmp_path) -> None:
    # --json and --save in one folder (the README's usage), the picture named after the source, not the JSON.
    out = tmp_path / "o"
    assert main(_argv("predict", inputs, out, **{"--save": str(out), "--json": str(out / "r.json")})) == 0
    assert (out / "photo.png").is_file() and isinstance(json.loads((out / "r.json").read_text()), list)


def test_the_rule_itself(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jpg").write_bytes(b"x")
    src = Read("the source", data / "a.jpg", source=True)
    save = Write("--save", tmp_path / "out", folder=True, names=frozenset({"a.jpg"}))
    check_paths([src], [save, Write("--json", tmp_path / "out" / "r.json")])
    with pytest.raises(ValueError, match="collide"):  # a folder that may write any name
        check_paths([src], [Write("--save", tmp_path / "out", folder=True), Write("--json", tmp_path / "out" / "r")])
    with pytest.raises(ValueError, match="holds the input"):  # a folder of sources: refused whatever it writes
        check_paths([src], [Write("--save", data, folder=True, names=frozenset({"b.jpg"}))])
    other = Read("--gt", data / "gt.txt")
    (data / "gt.txt").write_text("1")
    check_paths([other], [Write("--save", data, folder=True, names=frozenset({"a.jpg"}))])  # gt.txt is not written
    with pytest.raises(ValueError, match="holds the input"):
        check_paths([other], [Write("--save", data, folder=True, names=frozenset({"GT.TXT"}))])
    with pytest.raises(ValueError, match="overlap"):
        check_paths([], [Write("--save", tmp_path / "x", folder=True), Write("--repo", tmp_path / "x" / "y", True)])


def test_export_output_must_be_onnx(inputs, tmp_path, capsys) -> None:
    assert main(["export", str(inputs.model), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_ray_path_refuses_overlap_before_ray_starts(inputs, capsys) -> None:
    assert main(["predict", str(inputs.image), "-m", str(inputs.model), "--ray", "--json", str(inputs.model)]) == 2
    assert "is an input" in capsys.readouterr().err


def _device_node(path: Path) -> Path:
    """A character device with /dev/null's numbers (1, 3), made with mknod in a temporary folder."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD (root); this machine does not allow it")
    return path


def test_a_device_node_is_written_in_place_never_renamed_over(inputs, tmp_path) -> None:
    null = _device_node(tmp_path / "null")
    write_atomic(null, "discarded")
    assert stat.S_ISCHR(os.stat(null).st_mode)
    for option in ("--json", "--save"):
        argv = ["predict", str(inputs.image), "-m", str(inputs.model), "-q", "--json", str(null)]
        if option == "--save":
            argv += ["--save", str(tmp_path / "pics")]
        assert main(argv) == 0
        assert stat.S_ISCHR(os.stat(null).st_mode) and os.stat(null).st_rdev == os.makedev(1, 3)
    assert not list(tmp_path.rglob("*.tmp"))


def test_temporary_files_are_unique_and_removed_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    users_own = tmp_path / "r.json.tmp"
    users_own.write_text("mine")
    write_atomic(target, "[]")
    assert users_own.read_text() == "mine" and target.read_text() == "[]"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "[]" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.json.tmp"]
    with atomic_path(target) as a, atomic_path(target) as b:  # two writers at once: two temporary files
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the outer one finished last


def test_a_write_error_names_the_file(tmp_path: Path) -> None:
    full = tmp_path / "full"
    try:
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # /dev/full: every write fails with ENOSPC
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD (root); this machine does not allow it")
    with pytest.raises(OutputError, match="could not write .*full"):
        write_atomic(full, "x" * 10)
    assert stat.S_ISCHR(os.stat(full).st_mode)


def test_names_that_are_not_utf8(inputs, photo, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes: not UTF-8, kept as surrogate escapes
    Image.fromarray(photo).save(folder / odd)
    Image.fromarray(np.ascontiguousarray(photo[:200, :300])).save(folder / "plain.png")
    out = tmp_path / "out"
    argv = ["predict", str(folder), "-m", str(inputs.model), "-q", "--save", str(out), "--json", str(out / "r.json")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "caf\\xe9-\\xff.png" in printed  # reported escaped
    assert os.fsencode(odd) in os.listdir(os.fsencode(out)) and (out / "plain.png").is_file()
    records = json.loads((out / "r.json").read_text())
    assert {r["file_name"] for r in records} <= {odd, "plain.png"}
