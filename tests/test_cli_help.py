"""`uffdctl --help` from the index the install wrote (uffdctl.cli.helpindex): the same text as the slow way,
never a stale listing, and without loading the command table."""
from __future__ import annotations

import marshal
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from uffdctl.cli import cli as root
from uffdctl.cli import helpindex


def _slow(monkeypatch):
    monkeypatch.setattr(helpindex, "load", lambda path=helpindex.INDEX: None)


def test_the_install_wrote_a_current_index():
    assert os.path.exists(helpindex.INDEX), "setup.py's build_py did not write uffdctl/cli/help-index.marshal"
    entries = helpindex.load()
    assert entries is not None, "the installed index does not match the installed sources"
    with click.Context(root, info_name="uffdctl") as ctx:
        assert entries == helpindex.entries_of(root, ctx)


@pytest.mark.parametrize("width", [None, 60, 100, 200])
@pytest.mark.parametrize("argv", [["--help"], ["-h"], []])
def test_help_from_the_index_is_the_slow_help(monkeypatch, argv, width):
    kw = {} if width is None else {"terminal_width": width}
    fast = CliRunner().invoke(root, argv, **kw)
    _slow(monkeypatch)
    slow = CliRunner().invoke(root, argv, **kw)
    assert fast.output == slow.output and fast.exit_code == slow.exit_code
    assert "Commands:" in fast.output and "copy" in fast.output


def test_a_changed_source_makes_the_index_stale(tmp_path):
    doc = marshal.loads(open(helpindex.INDEX, "rb").read())
    good = tmp_path / "good.marshal"
    good.write_bytes(marshal.dumps(doc))
    assert helpindex.load(str(good)) == [tuple(e) for e in doc["entries"]]
    rel = "session/commands.py"
    assert rel in doc["files"], sorted(doc["files"])      # building the listing reads the command table
    crc, size = doc["files"][rel]
    for bad in ((crc ^ 1, size), (crc, size + 1)):
        doc["files"][rel] = bad
        stale = tmp_path / "stale.marshal"
        stale.write_bytes(marshal.dumps(doc))
        assert helpindex.load(str(stale)) is None
    doc["files"] = {"no/such/file.py": (0, 0)}
    stale.write_bytes(marshal.dumps(doc))
    assert helpindex.load(str(stale)) is None
    stale.write_bytes(b"not marshal")
    assert helpindex.load(str(stale)) is None
    assert helpindex.load(str(tmp_path / "missing")) is None


def test_help_does_not_load_the_command_table(tmp_path):
    code = ("import sys\nfrom uffdctl.cli import main\nrc = main(['--help'])\n"
            "bad = sorted(m for m in sys.modules if m.startswith('uffdctl.') and m not in "
            "('uffdctl.cli', 'uffdctl.cli.helpindex'))\n"
            "print('LOADED', bad, rc, file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "LOADED [] 0" in p.stderr, p.stderr
    assert "Commands:" in p.stdout


def test_a_command_still_loads_what_it_runs(tmp_path):
    """Only the listing comes from the index: a command's own --help builds the real command."""
    p = subprocess.run([sys.executable, "-m", "uffdctl", "copy", "--help"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 0 and "UFFDIO_COPY" in p.stdout and "Example" in p.stdout
