"""Finding L7: the run folder (worker and fork-server sockets, cenv locks) is checked before use:
ours, mode 0700, not a symbolic link; otherwise the server refuses to start, with one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import ROOT
from wce.config import ServerConfig, UnsafeRunFolder, private_folder


def test_a_missing_folder_is_made_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        made = private_folder(tmp_path / "a" / "run")
    finally:
        os.umask(old)
    st = os.lstat(made)
    assert st.st_mode & 0o7777 == 0o700 and st.st_uid == os.geteuid()
    assert private_folder(made) == made  # and an existing good one is accepted


def test_a_folder_not_ours_alone_is_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o700)
    os.chmod(loose, 0o777)
    with pytest.raises(UnsafeRunFolder, match="mode 0777, not 0700"):
        private_folder(loose)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UnsafeRunFolder, match="symbolic link"):
        private_folder(tmp_path / "link")
    (tmp_path / "file").write_text("")
    with pytest.raises(UnsafeRunFolder, match="not a folder"):
        private_folder(tmp_path / "file")
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(UnsafeRunFolder, match="belongs to uid 65534"):
            private_folder(theirs)


@pytest.fixture
def long_data(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A data folder whose `.run` would be too long for a socket name: the run folder is then
    `(temp folder)/wce-<hash>`, a name anyone on the host can compute and make first."""
    data = tmp_path / ("d" * 80)
    run = ServerConfig(data=str(data)).runtime_path
    assert not run.is_relative_to(data) and not run.exists()
    yield data, run
    if run.is_symlink() or run.is_file():
        run.unlink()
    elif run.exists():
        shutil.rmtree(run)


def serve(data: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "wce", "--data", str(data), "serve", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.communicate(timeout=60)
        raise AssertionError("the server started on a run folder that is not its own") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("planted", ["loose", "symlink", "other owner"])
def test_the_server_refuses_a_run_folder_made_by_someone_else(long_data: tuple[Path, Path], tmp_path: Path,
                                                               planted: str) -> None:
    data, run = long_data
    if planted == "loose":
        run.mkdir()
        os.chmod(run, 0o777)  # another local user's doing, or anyone's
    elif planted == "symlink":
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        run.symlink_to(theirs)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to make a folder owned by another user")
        run.mkdir(mode=0o700)
        os.chown(run, 65534, 65534)
    r = serve(data)
    assert r.returncode != 0 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(f"wce: the run folder {run} "), r.stderr
    assert not (run / "forkserver.sock").exists()
