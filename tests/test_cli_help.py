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
    monkeypatch.setattr(helpindex, "_doc", lambda path=helpindex.INDEX: None)


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
    n = iter(range(100))

    def index_with(d) -> str:
        path = tmp_path / f"index{next(n)}.marshal"      # a new path each time: load() reads a path once
        path.write_bytes(d if isinstance(d, bytes) else marshal.dumps(d))
        return str(path)

    good = index_with(doc)
    assert helpindex.load(good) == [tuple(e) for e in doc["entries"]]
    assert helpindex.rendered("uffdctl", good) in doc["pages"].values()
    rel = "session/commands.py"
    assert rel in doc["files"], sorted(doc["files"])      # building the listing reads the command table
    assert any(os.path.basename(p) == "formatting.py" and "click" in p for p in doc["files"])  # and click's
    for key, bad in ((rel, (doc["files"][rel][0] ^ 1, doc["files"][rel][1])),
                     (rel, (doc["files"][rel][0], doc["files"][rel][1] + 1)),
                     ("no/such/file.py", (0, 0))):
        stale = index_with({**doc, "files": {**doc["files"], key: bad}})
        assert helpindex.load(stale) is None and helpindex.rendered("uffdctl", stale) is None
    assert helpindex.load(index_with({**doc, "python": "2.7"})) is None
    assert helpindex.load(index_with(b"not marshal")) is None
    assert helpindex.load(str(tmp_path / "missing")) is None


def _loaded_by_help(tmp_path, wanted: str) -> str:
    """Run main(['--help']) in a fresh interpreter (no $COLUMNS, the index on); stderr names the modules of
    ``wanted`` (a Python expression over m, a module name) that ended up loaded, and main's exit code."""
    code = ("import sys\nfrom uffdctl.cli import main\nrc = main(['--help'])\n"
            f"print('LOADED', sorted(m for m in list(sys.modules) if {wanted}), rc, file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "UFFDCTL_NO_HELP_INDEX")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert "Commands:" in p.stdout
    return p.stderr


def test_help_does_not_load_the_command_table(tmp_path):
    err = _loaded_by_help(tmp_path, "m.startswith('uffdctl.') and m not in ('uffdctl.cli', 'uffdctl.cli.helpindex')")
    assert "LOADED [] 0" in err, err


def test_a_command_still_loads_what_it_runs(tmp_path):
    """Only the listing comes from the index: a command's own --help builds the real command."""
    p = subprocess.run([sys.executable, "-m", "uffdctl", "copy", "--help"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 0 and "UFFDIO_COPY" in p.stdout and "Example" in p.stdout


@pytest.mark.parametrize("columns", [None, "40", "60", "79", "80", "132", "junk"])
def test_the_rendered_root_page_is_what_click_renders(tmp_path, columns):
    """`uffdctl --help` and bare `uffdctl` print, at any $COLUMNS (or none: not a terminal), byte for byte
    what click renders with the index off."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "UFFDCTL_NO_HELP_INDEX")}
    if columns is not None:
        env["COLUMNS"] = columns
    for argv in (["--help"], []):
        fast = subprocess.run([sys.executable, "-m", "uffdctl", *argv], capture_output=True, text=True,
                              cwd=tmp_path, env=env)
        slow = subprocess.run([sys.executable, "-m", "uffdctl", *argv], capture_output=True, text=True,
                              cwd=tmp_path, env={**env, "UFFDCTL_NO_HELP_INDEX": "1"})
        assert (fast.stdout, fast.returncode) == (slow.stdout, slow.returncode)
        assert "Commands:" in fast.stdout


def test_help_from_the_rendered_page_imports_no_formatting(tmp_path):
    """The rendered page needs neither the command table nor click's text wrapping (textwrap, shutil)."""
    err = _loaded_by_help(tmp_path, "m in ('textwrap', 'shutil', 'uffdctl.session.commands')")
    assert "LOADED [] 0" in err, err
