"""uffdctl repro: each verdict per backend and profile, the kernel beside its emulator twin, expectation
mismatches fail, the scenario format, the CLI and its JSON."""
from __future__ import annotations

import json
import re
import os
import platform
import shutil

import pytest

from test_cli_support import Cli, need_kernel
from uffdctl import repro as R
from uffdctl.repro import render
from uffdctl.repro import scenario as S

SCENARIOS = {s.name: s for s in S.load_all()}
CASES = [(s.name, c.id) for s in SCENARIOS.values() for c in s.cases]
REP, NOT, UNS = "REPRODUCED", "NOT REPRODUCED", "UNSUPPORTED"

# The verdicts, written out here independently of the scenario files' expectations (the issue's "Done when"
# and spec §1.4/§7): scenario/case -> {emulator profile (soft-dirty on) -> verdict}.
EMU = {
    "copy-dirties/copy":            {"5.19": REP, "6.1": REP, "6.18": REP, "rfc-hints": NOT, "rfc-hints-fixed": NOT},
    "copy-dirties/copy-wp":         {"5.19": REP, "6.1": REP, "6.18": REP, "rfc-hints": NOT, "rfc-hints-fixed": NOT},
    "copy-dirties/zeropage":        {"5.19": NOT, "6.1": NOT, "6.18": NOT, "rfc-hints": NOT, "rfc-hints-fixed": NOT},
    "copy-dirties/continue":        {"5.19": REP, "6.1": REP, "6.18": REP, "rfc-hints": NOT, "rfc-hints-fixed": NOT},
    "copy-dirties/move":            {"5.19": UNS, "6.1": UNS, "6.18": REP, "rfc-hints": UNS, "rfc-hints-fixed": UNS},
    "copy-dirties/copy-written":    {"5.19": UNS, "6.1": UNS, "6.18": REP, "rfc-hints": UNS, "rfc-hints-fixed": UNS},
    "unprotect-extra-fault/anon":   {"5.19": REP, "6.1": REP, "6.2": REP, "6.18": NOT, "7.3": NOT},
    "unprotect-extra-fault/shmem":  {"5.19": NOT, "6.1": NOT, "6.2": NOT, "6.18": REP, "7.3": REP},
    "unprotect-extra-fault/anon-softdirty": {"5.19": REP, "6.1": REP, "6.18": REP},
    "clean-writable-escapes-softdirty/anon": {"5.19": NOT, "6.1": NOT, "6.18": NOT, "rfc-hints": REP,
                                              "rfc-hints-fixed": NOT},
    "clean-writable-escapes-softdirty/write-likely": {"rfc-hints": NOT, "rfc-hints-fixed": NOT},
    "wp-clean-flush/clean":         {"5.19": REP, "6.1": REP, "6.18": REP, "rfc-hints": NOT, "rfc-hints-fixed": NOT},
    "softdirty-lost-wp-shmem/wp-onoff":   {"5.19": REP, "6.1": REP, "6.2": REP, "6.18": NOT},
    "softdirty-lost-wp-shmem/unregister": {"5.19": REP, "6.1": REP, "6.2": REP, "6.18": NOT},
}
# This host's kind of kernel: 6.7+ (PAGEMAP_SCAN, WP_ASYNC, MOVE), CONFIG_MEM_SOFT_DIRTY off (measured on 6.18.44).
KERNEL_NO_SOFTDIRTY = {
    "copy-dirties/copy": REP,             # through Private_Dirty
    "copy-dirties/copy-wp": REP,          # through Private_Dirty
    "copy-dirties/zeropage": NOT,
    "copy-dirties/continue": UNS,
    "copy-dirties/move": UNS,
    "copy-dirties/copy-written": REP,     # through PAGE_IS_WRITTEN and Private_Dirty
    "unprotect-extra-fault/anon": NOT,
    "unprotect-extra-fault/shmem": REP,
    "unprotect-extra-fault/anon-softdirty": UNS,
    "clean-writable-escapes-softdirty/anon": UNS,
    "clean-writable-escapes-softdirty/write-likely": UNS,   # and the hints were never merged
    "wp-clean-flush/clean": REP,
    "softdirty-lost-wp-shmem/wp-onoff": UNS,
    "softdirty-lost-wp-shmem/unregister": UNS,
}
EMU_RUNS = [(n, p) for n, ps in EMU.items() for p in ps]


def _case(name: str):
    scen, cid = name.split("/")
    sc = SCENARIOS[scen]
    return sc, sc.case(cid)


def test_tables_cover_every_case():
    names = {f"{s}/{c}" for s, c in CASES}
    assert set(EMU) == names and set(KERNEL_NO_SOFTDIRTY) == names
    assert list(SCENARIOS) == ["copy-dirties", "unprotect-extra-fault", "clean-writable-escapes-softdirty",
                               "wp-clean-flush", "softdirty-lost-wp-shmem"]


@pytest.mark.parametrize("name,profile", EMU_RUNS, ids=[f"{n}@{p}" for n, p in EMU_RUNS])
def test_emulator_verdict(name, profile):
    sc, case = _case(name)
    r = R.run_case(sc, case, R.Target("emu", profile))
    assert r.verdict == EMU[name][profile], (r.reason, r.observed)
    assert r.match is True, f"scenario expectation {r.expected} disagrees with {r.verdict}"
    assert r.steps and all("error" not in s for s in r.steps) or r.verdict == UNS


@pytest.mark.parametrize("name", [f"{s}/{c}" for s, c in CASES])
def test_emulator_without_soft_dirty_is_the_host(name):
    """The emulator twin of this host (6.18, CONFIG_MEM_SOFT_DIRTY=n) gives the host's verdicts."""
    sc, case = _case(name)
    r = R.run_case(sc, case, R.Target("emu", "6.18", soft_dirty=False, mirror=True))
    assert r.verdict == KERNEL_NO_SOFTDIRTY[name], (r.reason, r.observed)
    assert r.match is True


@pytest.mark.kernel
@pytest.mark.parametrize("name", [f"{s}/{c}" for s, c in CASES])
def test_kernel_beside_emulator(name):
    """On the real kernel: the verdict matches the scenario's expectation for this release, and the
    emulator twin (the kernel's series, soft-dirty as on the host) observes the same state at every step."""
    need_kernel()
    sc, case = _case(name)
    k = R.run_case(sc, case, R.Target("kernel"))
    assert k.verdict != "ERROR", k.reason
    assert k.facts["release"] == platform.release()
    if k.environment:
        assert k.verdict == UNS and k.reason
    else:
        assert k.match is not False, f"{k.verdict}, expected {k.expected}: {k.reason} {k.observed}"
    if not k.facts["soft_dirty"] and R.runner.S.release_in(k.facts["release"], "6.7-"):
        assert k.verdict == KERNEL_NO_SOFTDIRTY[name] or k.environment, (k.reason, k.observed)
        if KERNEL_NO_SOFTDIRTY[name] == UNS and "soft_dirty" in case.needs and not case.fallback:
            assert k.reason.startswith("CONFIG_MEM_SOFT_DIRTY off"), k.reason
    m = R.run_case(sc, case, R.Target("emu", R.mirror_profile(k.facts["release"]), k.facts["soft_dirty"],
                                      mirror=True))
    diffs = [d for d in R.diff_steps(k, m) if d]
    assert not diffs, diffs
    if not k.environment:
        assert k.verdict == m.verdict


def test_kernel_copy_dirties_shows_private_dirty_and_written():
    """Done when: copy-dirties REPRODUCED on the kernel through Private_Dirty and PAGE_IS_WRITTEN."""
    need_kernel()
    sc, case = _case("copy-dirties/copy-written")
    r = R.run_case(sc, case, R.Target("kernel"))
    if r.facts["soft_dirty"] or not S.release_in(r.facts["release"], "6.7-"):
        pytest.skip(f"checks the no-soft-dirty 6.7+ host; this kernel: {r.facts}")
    assert r.verdict == REP
    assert r.observed["written"] == 1 and r.observed["private_dirty"] == 4096 and r.observed["uffd_wp"] == 0
    sc, case = _case("copy-dirties/copy")
    r = R.run_case(sc, case, R.Target("kernel"))
    assert r.verdict == REP and "private_dirty > 0" in r.reason and "CONFIG_MEM_SOFT_DIRTY off" in r.reason


@pytest.mark.parametrize("name", [f"{s}/{c}" for s, c in CASES])
def test_changed_expectation_is_reported(name):
    """A scenario whose expectation is changed reports a failure: the verdict comes from the observation."""
    sc, case = _case(name)
    sc = S.parse(open(os.path.join(os.path.dirname(S.__file__), sc.path)).read(), sc.path,
                 {s.name: s.body for s in SCENARIOS.values()})
    case = sc.case(case.id)
    profile = next(iter(EMU[name]))
    facts = R.run_case(sc, case, R.Target("emu", profile)).facts
    rule = sc.expectation(case, facts)
    rule.verdict = NOT if rule.verdict == REP else REP
    rep = R.run([sc], "emu", (profile,), (case.id,))
    assert rep.exit == 1
    [r] = rep.failures
    assert r.match is False and r.expected.verdict == rule.verdict
    assert "CONTRADICTS" in render.report(rep, [sc]) and "contradict" in render.summary(rep)


def test_verdict_comes_from_the_observation():
    """Removing every expectation changes no verdict (nothing to judge: match None, exit 0)."""
    sc, case = _case("unprotect-extra-fault/anon")
    case.rules, saved = [], case.rules
    try:
        r = R.run_case(sc, case, R.Target("emu", "5.19"))
    finally:
        case.rules = saved
    assert r.verdict == REP and r.expected is None and r.match is None


def test_trace_columns():
    sc, case = _case("unprotect-extra-fault/shmem")
    r = R.run_case(sc, case, R.Target("emu", "6.18"))
    texts = [s["text"] for s in r.steps]
    assert texts == [st.text for st in sc.steps(case)]
    wp_on, wp_off, write = r.steps[-3]["state"], r.steps[-2]["state"], r.steps[-1]["state"]
    assert (wp_on["uffd_wp"], wp_on["write"], wp_on["flushes"]) == (1, 0, 1)
    assert (wp_off["uffd_wp"], wp_off["write"], wp_off["dirty"]) == (0, 0, 1)    # §2.3.6: stays read-only
    assert (write["fault"], write["write"], write["faults"]) == (1, 1, 2)
    text = render.trace([r])
    assert "writeprotect buf:0 --off" in text and "≠" not in text


def test_softdirty_unsupported_reason_is_the_round_trip():
    sc, case = _case("clean-writable-escapes-softdirty/anon")
    r = R.run_case(sc, case, R.Target("emu", "rfc-hints", soft_dirty=False))
    assert r.verdict == UNS and r.reason.startswith("emulated CONFIG_MEM_SOFT_DIRTY=n")
    assert all(s["state"].get("soft_dirty") is None for s in r.steps)      # never shown as 0


def test_every_expectation_has_a_source():
    for sc in SCENARIOS.values():
        for case in sc.cases:
            assert case.rules, f"{sc.name}/{case.id} has no expectations"
            for rule in case.rules:
                # a kernel commit, a kernel function, a measurement, the thread or the RFC -- never the spec's
                # section numbers, which users do not have
                assert rule.source and re.search(r"\b[0-9a-f]{12}\b|\w\(|\.[ch]\b|measured|thread|RFC|UFFD|CONFIG_",
                                                 rule.source), rule
                assert "spec §" not in rule.source and "§" not in rule.source, rule


@pytest.mark.parametrize("text,msg", [
    ("__import__('os')", "not allowed"),
    ("soft_dirty.real", "not allowed"),
    ("bogus == 1", "unknown observable"),
    ("fault >=", "bad symptom"),
])
def test_symptom_language_is_closed(text, msg):
    with pytest.raises(S.ScenarioError, match=msg):
        S.check_expr(text, "t")


@pytest.mark.parametrize("edit,msg", [
    (("verdict = \"REPRODUCED\"", "verdict = \"MAYBE\""), "expectation verdict"),
    (("touch buf:0 --write --wait", "frobnicate buf:0"), "unknown command"),
    (("--type ${TYPE}", "--type ${NOPE}"), "no value for"),
    (("#: symptom = \"fault >= 1\"", "#: symptom = \"fault >= 1\"\n#: needs = [\"magic\"]"), "unknown needs"),
])
def test_malformed_scenarios_are_refused(edit, msg):
    text = open(os.path.join(os.path.dirname(S.__file__), "scenarios", "unprotect-extra-fault.uffd")).read()
    assert edit[0] in text
    with pytest.raises(S.ScenarioError, match=msg):
        S.parse(text.replace(edit[0], edit[1], 1))


@pytest.mark.parametrize("release,spec,ok", [
    ("6.18.44-fc-v595", "6.3-", True), ("6.1.0-56-amd64", "5.19-6.2", True), ("6.2.0", "5.19-6.2", True),
    ("6.3.1", "5.19-6.2", False), ("6.6.0", "-6.6", True), ("6.7.0", "-6.6", False), ("5.19.0-rfc-hints", "5.16-", True),
])
def test_release_ranges(release, spec, ok):
    assert S.release_in(release, spec) is ok


# -- the command line ------------------------------------------------------------------------------------
@pytest.fixture
def cli(tmp_path):
    return Cli(tmp_path / "rt", tmp_path)


def test_cli_list(cli):
    p = cli("repro", "list", check=0)
    for name in SCENARIOS:
        assert name in p.stdout
    doc = json.loads(cli("-j", "repro", "list", check=0).stdout)
    assert [s["name"] for s in doc["scenarios"]] == list(SCENARIOS)


def test_cli_json_is_stamped(cli):
    p = cli("-j", "repro", "unprotect-extra-fault", "--backend", "emu", "--profile", "5.19,6.18", check=0)
    doc = json.loads(p.stdout)
    for key in ("release", "soft_dirty", "profiles", "targets", "results", "runs", "divergences", "exit"):
        assert key in doc
    assert doc["profiles"] == ["5.19", "6.18"] and doc["exit"] == 0
    run = doc["runs"][0]
    assert run["release"] == "5.19.0" and run["profile"] == "5.19" and run["soft_dirty"] is True
    assert set(run["steps"][-1]["state"]) >= {"present", "write", "dirty", "soft_dirty", "uffd_wp", "private_dirty",
                                              "written", "fault", "faults", "flushes"}
    res = {(r["scenario"], r["case"], r["target"]["profile"]): r["verdict"] for r in doc["results"]}
    assert res[("unprotect-extra-fault", "anon", "5.19")] == REP
    assert res[("unprotect-extra-fault", "anon", "6.18")] == NOT


def test_cli_both_marks_nothing_on_this_host(cli):
    need_kernel()
    p = cli("-j", "repro", "all", "--backend", "both", "--profile", "6.18", timeout=300)
    doc = json.loads(p.stdout)
    assert p.returncode == 0, doc["failures"]
    assert doc["release"] == platform.release() and isinstance(doc["soft_dirty"], bool)
    assert doc["divergences"] == []
    assert [t["label"] for t in doc["targets"]][:1] == ["kernel"] and doc["targets"][1]["mirror"]


def test_cli_changed_expectation_exits_1(cli, tmp_path):
    d = tmp_path / "sc"
    shutil.copytree(os.path.join(os.path.dirname(S.__file__), "scenarios"), d)
    f = d / "unprotect-extra-fault.uffd"
    text = f.read_text()
    old = '{ release = "6.3-", verdict = "NOT REPRODUCED"'
    assert old in text
    f.write_text(text.replace(old, '{ release = "6.3-", verdict = "REPRODUCED"'))
    p = cli("repro", "unprotect-extra-fault", "--scenario-dir", d, "--backend", "emu", "--profile", "6.18",
            "--case", "anon")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "CONTRADICTS THE EXPECTATION" in p.stdout and "NOT REPR. ✗" in p.stdout
    doc = json.loads(cli("-j", "repro", "unprotect-extra-fault", "--scenario-dir", d, "--backend", "emu",
                         "--profile", "6.18", "--case", "anon", check=1).stdout)
    assert doc["failures"] == ["unprotect-extra-fault/anon @emu 6.18"]


@pytest.mark.parametrize("args,msg", [
    (["nope"], "unknown scenario 'nope'"),
    (["all", "--profile", "9.9"], "unknown profile(s) 9.9"),
    (["all", "--backend", "kernel", "--profile", "6.1"], "--profile is for the emulator"),
    (["all", "--case", "zzz"], "unknown case(s) zzz"),
    (["all", "--backend", "qemu"], "Invalid value"),
    ([], "Missing argument"),
])
def test_cli_bad_input(cli, args, msg):
    p = cli("repro", *args)
    assert p.returncode == 2
    assert msg in p.stderr and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_cli_bad_scenario_dir(cli, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.uffd").write_text("#: name = \"x\"\nmmap --size 4K\n")
    p = cli("repro", "all", "--scenario-dir", d)
    assert p.returncode == 2 and "header lacks" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("release,sd,profiles,want", [
    ("6.18.44-fc", False, ("5.19", "6.18"), ["kernel", "emu 6.18 sd=off", "emu 5.19", "emu 6.18"]),
    ("6.1.0-56-amd64", True, ("6.1",), ["kernel", "emu 6.1"]),          # the twin is the 6.1 profile already
    ("6.12.117", True, ("6.1",), ["kernel", "emu 6.12", "emu 6.1"]),     # the 6.12 profile is its twin
    ("6.13.2", True, ("6.1",), ["kernel", "emu 6.18", "emu 6.1"]),       # no 6.13 profile: the default twin
])
def test_targets_of_both(release, sd, profiles, want, monkeypatch):
    monkeypatch.delenv("UFFDCTL_EMU_PROFILE", raising=False)
    ts = R.targets_for("both", profiles, {"available": True, "release": release, "soft_dirty": sd})
    assert [t.label for t in ts] == want and ts[1].mirror
    assert [t.label for t in R.targets_for("kernel", profiles, None)] == ["kernel"]
    assert [t.label for t in R.targets_for("emu", ("7.3",), None)] == ["emu 7.3"]


def test_a_built_kernel_declares_its_twin(monkeypatch):
    """vmtest's guest of a patched build names the twin (the patch's Emulator-Profile/-Switches): the repro step's
    mirror is that profile, not the release's series."""
    k = {"available": True, "release": "6.1.192-vmtest-53e00ae7", "soft_dirty": True}
    monkeypatch.setenv("UFFDCTL_EMU_PROFILE", "rfc-hints")
    monkeypatch.delenv("UFFDCTL_EMU_SWITCHES", raising=False)
    ts = R.targets_for("both", ("rfc-hints",), k)
    assert [t.label for t in ts] == ["kernel", "emu rfc-hints"] and ts[1].mirror
    monkeypatch.setenv("UFFDCTL_EMU_PROFILE", "6.1")
    monkeypatch.setenv("UFFDCTL_EMU_SWITCHES", "uffd_wp_range_vm_page_prot=1")
    ts = R.targets_for("both", ("6.1",), k)
    assert [t.label for t in ts] == ["kernel", "emu 6.1 uffd_wp_range_vm_page_prot=1", "emu 6.1"]
    assert ts[1].mirror and ts[1].switches == (("uffd_wp_range_vm_page_prot", True),)
    monkeypatch.setenv("UFFDCTL_EMU_PROFILE", "no-such-profile")
    assert [t.label for t in R.targets_for("both", (), k)] == ["kernel", "emu 6.1"]


def test_the_twin_runs_with_its_switches(monkeypatch):
    """The backport's twin (6.1 + uffd_wp_range_vm_page_prot) shows the backport's flips, the plain 6.1 does not."""
    sc = next(s for s in R.load_all() if s.name == "unprotect-extra-fault")
    case = next(c for c in sc.cases if c.id == "anon")
    plain = R.run_case(sc, case, R.Target("emu", "6.1", True))
    twin = R.run_case(sc, case, R.Target("emu", "6.1", True, mirror=True,
                                         switches=(("uffd_wp_range_vm_page_prot", True),)))
    assert (plain.verdict, twin.verdict) == ("REPRODUCED", "NOT REPRODUCED")
    assert twin.facts["switches"] == {"uffd_wp_range_vm_page_prot": True}


@pytest.mark.parametrize("line,local", [
    ("python3-120 [000] d..1. 11.215578: tlb_flush: pages:1 reason:local mm shootdown (3)", True),   # 6.1
    ("python3-9 [001] d..1. 5.1: tlb_flush: pages:1 reason:local MM shootdown (3)", True),          # 6.18
    ("python3-9 [001] d..1. 5.1: tlb_flush: pages:1 reason:local shootdown (2)", True),
    ("python3-9 [001] d..1. 5.1: tlb_flush: pages:1 reason:remote IPI send (4)", False),
    ("python3-9 [001] d..1. 5.1: tlb_flush: pages:-1 reason:flush on task switch (0)", False),
])
def test_tlb_trace_counts_local_flushes_by_number(line, local):
    from uffdctl.repro import tlbtrace
    m = tlbtrace._REASON.search(line)
    assert m and (int(m.group(1)) in tlbtrace.LOCAL_REASONS) is local


def test_diff_ignores_the_absorbing_touch_only():
    """A touch elsewhere (absorbing clear-refs 4's stack faults) is not compared; the watched page's are."""
    sc, case = _case("unprotect-extra-fault/anon-softdirty")
    a = R.run_case(sc, case, R.Target("emu", "6.18"))
    b = R.run_case(sc, case, R.Target("emu", "6.18"))
    spare = next(i for i, s in enumerate(a.steps) if s["text"].startswith("touch spare"))
    assert a.steps[spare].get("aside") and not a.steps[-1].get("aside")
    a.steps[spare]["state"]["fault"] = 3
    assert not any(R.diff_steps(a, b))
    a.steps[-1]["state"]["fault"] = 0
    assert R.diff_steps(a, b)[-1] == {"fault": (0, 1)}


def test_write_likely_keeps_soft_dirty_without_a_fault():
    """The RFC's WRITE_LIKELY un-protect: writable and soft-dirty at once, so the write neither faults nor escapes."""
    sc, case = _case("clean-writable-escapes-softdirty/write-likely")
    for profile in ("rfc-hints", "rfc-hints-fixed"):
        r = R.run_case(sc, case, R.Target("emu", profile))
        off = next(s["state"] for s in r.steps if s["text"].startswith("writeprotect buf:0 --off"))
        assert (off["write"], off["soft_dirty"]) == (1, 1) and r.observed["fault"] == 0 and r.verdict == NOT
    r = R.run_case(sc, case, R.Target("emu", "6.18"))
    assert r.verdict == UNS and "never merged" in r.reason and r.match is True
