"""The one opener of backends: which backends exist, which one serves a request, and why.

Everything that needs an address space (sessions, ``uffdctl run``, the
reproductions, ``check``, the tests) calls :func:`open_backend`; nothing else
imports an implementation to build one, and nothing else asks which
implementation it got by name.

The rules, the same for every command:

- ``kernel`` is the running kernel: emulator options (``profile``,
  ``soft_dirty``, ``switches``) are a usage error with it.
- ``emu`` is the emulator; its options choose the modelled kernel.
- ``auto`` is the kernel when it can serve, else the emulator; emulator options
  given with ``auto`` mean the emulator.  Either way the choice is never silent:
  the backend's :attr:`~uffdctl.backend.Backend.selection` says what was asked,
  what opened and why (``notice()`` is the one stderr line a command prints).
"""
from __future__ import annotations

import os

from .backend import Backend
from .errors import BackendUnavailable, UsageError
from .types import BackendSelection

BACKENDS = ("kernel", "emu")
CHOICES = ("auto",) + BACKENDS


def _open_kernel(opts: dict) -> Backend:
    from .kernel import KernelBackend
    return KernelBackend(**opts)


def _open_emu(opts: dict) -> Backend:
    from .emu import DEFAULT_PROFILE, EmuBackend, get_profile
    switches = {k: v for k, v in opts.items() if k not in ("profile", "soft_dirty")}
    if "profile" in opts or switches:
        try:    # only the profile lookup: an error inside the emulator is a bug and stays one
            get_profile(opts.get("profile") or DEFAULT_PROFILE, **switches)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return EmuBackend(**opts)


_OPENERS = {"kernel": _open_kernel, "emu": _open_emu}


def _emu_options(profile, soft_dirty, switches) -> dict:
    opts: dict = {}
    if profile is not None:
        opts["profile"] = profile
    if soft_dirty is not None:
        opts["soft_dirty"] = bool(soft_dirty)
    opts.update(switches or {})
    return opts


def _describe_emu_options(profile, soft_dirty, switches) -> str:
    parts = []
    if profile is not None:
        parts.append(f"--profile {profile}")
    if soft_dirty is not None:
        parts.append(f"--soft-dirty {'on' if soft_dirty else 'off'}")
    if switches:
        parts.append("emulator switches " + ",".join(sorted(switches)))
    return " and ".join(parts)


def open_backend(name: str = "auto", *, profile: str | None = None, soft_dirty: bool | None = None,
                 switches: dict | None = None, **kernel_opts) -> Backend:
    """Open a backend: ``"kernel"``, ``"emu"`` or ``"auto"`` (see the module's rules).

    ``profile`` / ``soft_dirty`` / ``switches`` choose the emulated kernel (emulator only);
    ``kernel_opts`` go to the kernel backend (``user_mode_only=``).  Raises
    :class:`~uffdctl.errors.UsageError` for a bad name, an unknown profile or emulator options with
    ``kernel``, and :class:`~uffdctl.errors.BackendUnavailable` when ``kernel`` cannot serve here.
    The returned backend's ``selection`` records the choice.
    """
    if name not in CHOICES:
        raise UsageError(f"unknown backend {name!r} (valid: {', '.join(CHOICES)})")
    emu_asked = _describe_emu_options(profile, soft_dirty, switches)
    if name == "kernel" and emu_asked:
        raise UsageError(f"{emu_asked} is for the emulator: the kernel backend is the running kernel "
                         f"(use --backend emu, or auto)")
    if kernel_opts and (name == "emu" or emu_asked):
        raise UsageError(f"{', '.join('--' + k.replace('_', '-') for k in sorted(kernel_opts))} is for the kernel "
                         f"backend: the emulator does not model it")
    reason, fallback = "requested", False
    if name == "auto" and emu_asked:
        name, reason = "emu", f"{emu_asked} {'ask' if ' and ' in emu_asked else 'asks'} for the emulator"
    elif name in ("kernel", "auto"):
        try:
            b = _OPENERS["kernel"](kernel_opts)
        except BackendUnavailable as e:
            if name == "kernel":
                raise
            name, reason, fallback = "emu", f"kernel backend unavailable: {e}", True
        else:
            b.selection = BackendSelection(requested="kernel" if name == "kernel" else "auto", backend="kernel",
                                           reason="requested" if name == "kernel" else "the kernel can serve")
            return b
    b = _OPENERS["emu"](_emu_options(profile, soft_dirty, switches))
    b.selection = BackendSelection(requested="emu" if reason == "requested" else "auto", backend="emu",
                                   reason=reason, fallback=fallback)
    return b


def emulator_profiles() -> tuple[str, ...]:
    """The kernel versions the emulator models (profile names), oldest first as the emulator lists them."""
    from .emu import PROFILES
    return tuple(PROFILES)


def is_emulator_profile(name: str) -> bool:
    """A profile name, or a release of a modelled series ("6.1.176": the 6.1 profile less later backports)."""
    from .emu.profiles import is_profile
    return is_profile(name)


def twin_profile(release: str, version: str | None = None) -> str:
    """The emulator profile of a kernel: its series' (6.1, 6.18, ...), or its release's ("6.1.176", ``version``
    being the upstream version the kernel backend's describe() reads) where that release lacks stable
    backports the series' profile has; the default (6.18) for a series not modelled."""
    from .emu.profiles import split_release, taken_back
    series = ".".join(release.split("-")[0].split(".")[:2])
    if series not in emulator_profiles():
        return default_profile()
    sr = split_release(version) if version else None
    if sr and sr[0] == series and taken_back(*sr):
        return version
    return series


def describe_twin(name: str) -> str:
    """One line on what a profile models: "profile 6.1.176: the 6.1 profile (6.1.192) less 2 stable backports
    (...)", or "profile 6.18 (6.18.44)"."""
    from .emu.profiles import PROFILES, get_profile, split_release, taken_back
    p = get_profile(name)
    if name in PROFILES:
        return f"profile {name} ({p.release})"
    series, sub = split_release(name)
    back = taken_back(series, sub)
    base = f"profile {name}: the {series} profile ({PROFILES[series].release})"
    if not back:
        return base + ", no later backport recorded"
    return base + f" less {len(back)} stable backport{'s' if len(back) > 1 else ''} (" + \
        "; ".join(f"{change}, {series}.{s}" for s, change, _ in back) + ")"


def profile_series(name: str) -> str:
    """The profile a release profile derives from ("6.1" for "6.1.176"); any other name is its own."""
    from .emu.profiles import series_of
    return series_of(name)


def emulator_profiles_help() -> str:
    from .emu.profiles import profile_names_help
    return profile_names_help()


def default_profile() -> str:
    """The profile the emulator models when none is asked for."""
    from .emu import DEFAULT_PROFILE
    return DEFAULT_PROFILE


def env_backend_default() -> str:
    """The default backend name: ``$UFFDCTL_BACKEND``, else ``auto``."""
    return os.environ.get("UFFDCTL_BACKEND", "auto")


__all__ = ["BACKENDS", "CHOICES", "open_backend", "env_backend_default", "emulator_profiles", "default_profile"]
