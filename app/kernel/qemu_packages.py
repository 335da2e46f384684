"""Debian pieces of the qemu guest: the kernels (fetched and cached) and the host tools.

Kernels come from Debian's registry by package name (``apt-get download``), the ``.deb`` is
kept in ``CACHE/debs`` (older ABIs disappear from the mirror) and only ``boot/vmlinuz-*`` is
unpacked, to ``CACHE/kernels/VERSION/``. ``CACHE`` is ``$KSMLAB_CACHE``, else
``$XDG_CACHE_HOME/ksmlab``, else ``~/.cache/ksmlab``.

Every missing piece raises :class:`MissingPiece` whose message is one line saying what to
install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

#: Debian 12 kernel package per profile, and the version the shared traces were recorded on.
KERNEL_PACKAGES: dict[str, tuple[str, str]] = {
    "6.1": ("linux-image-6.1.0-57-cloud-amd64-unsigned", "6.1.192-3"),
    "6.12": ("linux-image-6.12.117+deb12-cloud-amd64-unsigned", "6.12.117-1~deb12u1"),
}
#: host packages the guest is built from, for the trace's meta
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "python3.11")
QEMU = "qemu-system-x86_64"
SETUP_HINT = "bash .ci/qemu-setup.sh"


class MissingPiece(Exception):
    """Something the guest needs is not installed or cannot be fetched (one-line message)."""


@dataclass(frozen=True)
class Kernel:
    version: str  # profile: "6.1" or "6.12"
    package: str
    package_version: str
    deb: Path
    vmlinuz: Path


def cache_dir() -> Path:
    env = os.environ.get("KSMLAB_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ksmlab"


def check_version(version: str) -> tuple[str, str]:
    try:
        return KERNEL_PACKAGES[version]
    except KeyError:
        known = ", ".join(KERNEL_PACKAGES)
        raise MissingPiece(f"no qemu kernel for {version!r} (known: {known})") from None


def find_qemu() -> str:
    path = shutil.which(QEMU)
    if not path:
        raise MissingPiece(f"{QEMU} not found: apt-get install qemu-system-x86 (or {SETUP_HINT})")
    return path


def _deb_field(deb: Path, name: str) -> str:
    out = subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


def _cached_deb(debs: Path, package: str, wanted: str) -> Path | None:
    found = sorted(debs.glob(f"{package}_*_amd64.deb"))
    exact = [d for d in found if _deb_field(d, "Version") == wanted]
    if exact:
        return exact[0]
    return found[-1] if found else None


def _download(debs: Path, package: str, wanted: str) -> Path:
    """``apt-get download`` the recorded version, else whatever the registry offers."""
    if not shutil.which("apt-get"):
        raise MissingPiece(f"kernel package {package} not cached in {debs} and no apt-get")
    debs.mkdir(parents=True, exist_ok=True)
    errors = []
    for spec in (f"{package}={wanted}", package):
        proc = subprocess.run(
            ["apt-get", "download", "-q", spec],
            cwd=debs,
            capture_output=True,
            text=True,
            check=False,
        )
        got = _cached_deb(debs, package, wanted)
        if proc.returncode == 0 and got:
            return got
        errors.append(proc.stderr.strip().splitlines()[-1:] or ["?"])
    raise MissingPiece(
        f"cannot fetch {package}: {errors[-1][0]} (run apt-get update, or {SETUP_HINT})"
    )


def _read_vmlinuz(deb: Path) -> tuple[str, bytes] | None:
    """Name and bytes of ``boot/vmlinuz-*`` in the .deb (``dpkg-deb --fsys-tarfile``)."""
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name.startswith("boot/vmlinuz-") and member.isfile():
                    src = tar.extractfile(member)
                    return (Path(name).name, src.read()) if src else None
    except (tarfile.TarError, OSError):
        return None
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
    return None


def _unpack_vmlinuz(deb: Path, dest: Path) -> Path:
    if not shutil.which("dpkg-deb"):
        raise MissingPiece("dpkg-deb not found: apt-get install dpkg")
    got = _read_vmlinuz(deb)
    if got is None:
        raise MissingPiece(
            f"{deb} is damaged or holds no boot/vmlinuz-*: delete it and run {SETUP_HINT}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    found = dest / got[0]
    tmp = found.with_suffix(f".{os.getpid()}.part")
    tmp.write_bytes(got[1])
    tmp.replace(found)
    return found


def ensure_kernel(version: str, fetch: bool = True) -> Kernel:
    """The kernel image for profile ``version``, fetched and unpacked into the cache if needed."""
    package, wanted = check_version(version)
    debs = cache_dir() / "debs"
    deb = _cached_deb(debs, package, wanted) if debs.is_dir() else None
    if deb is None:
        if not fetch:
            raise MissingPiece(f"kernel package {package} not in {debs}: run {SETUP_HINT}")
        deb = _download(debs, package, wanted)
    pkg_version = _deb_field(deb, "Version")
    dest = cache_dir() / "kernels" / version / pkg_version.replace("~", "_")
    images = sorted(dest.glob("vmlinuz-*")) if dest.is_dir() else []
    vmlinuz = images[0] if images else _unpack_vmlinuz(deb, dest)
    return Kernel(version, package, pkg_version, deb, vmlinuz)


def host_package_versions() -> dict[str, str | None]:
    """Installed versions of the host packages the guest is made of (None if unknown)."""
    out: dict[str, str | None] = dict.fromkeys(HOST_PACKAGES)
    try:
        proc = subprocess.run(
            ["dpkg-query", "-W", *HOST_PACKAGES], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return out
    for line in proc.stdout.splitlines():
        name, _, ver = line.partition("\t")
        out[name.split(":")[0]] = ver or None
    return out
