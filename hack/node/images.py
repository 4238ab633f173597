#!/usr/bin/env python3
"""Writes the node's container images as OCI archives, without Docker or a registry.

    images.py OUT_DIR --pause BIN --fedcred BIN --alloydb-proxy BIN [--site-packages DIR --report FILE]

Each image is one layer (a tar written in a fixed order with fixed times and owners, so the same
inputs give the same digests) plus its config, manifest and index, in the layout that
`ctr -n k8s.io images import` reads. It writes OUT_DIR/NAME.tar for each image and OUT_DIR/images,
one `NAME REFERENCE` line each.

- pause: the static sandbox program, alone.
- fedcred: the layout of the Dockerfile's image (gcr.io/distroless/static-debian12:nonroot plus
  /usr/local/bin/fedcred): user 65532:65532, /etc/passwd and /etc/group naming root, nobody and
  nonroot, CA certificates, /tmp, /home/nonroot, no shell and no libraries. The binary must be
  the static one hack/build-image-binary.sh builds as the Dockerfile does.
- alloydb-auth-proxy: the proxy with the libraries it links, user 65532, as Google's image runs it.
- client: Debian's python3 with its standard library and psql, with their libraries, user 65532;
  what the test apps run (no shell either).
- report (with --site-packages and --report): seed 003's report job as its users ship it: the
  client image plus Google's client libraries (google-cloud-bigquery, google-cloud-storage and
  what they import, taken from a virtualenv's site-packages built on the same python3) and the
  unchanged program at /app/bigquery_report.py.
"""

import argparse
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile

NONROOT = 65532
PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Layer:
    """A root filesystem assembled in memory, written as a reproducible tar."""

    def __init__(self):
        self.entries = {}  # path -> (kind, mode, uid, data or link target)

    def dir(self, path, mode=0o755, uid=0):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            self.entries.setdefault("/".join(parts[:i]), ("dir", 0o755, 0, None))
        self.entries["/".join(parts)] = ("dir", mode, uid, None)

    def file(self, path, data, mode=0o644, uid=0):
        parent = os.path.dirname(path.strip("/"))
        if parent and parent not in self.entries:
            self.dir(parent)
        self.entries[path.strip("/")] = ("file", mode, uid, data)

    def copy(self, src, dest=None, mode=None):
        """Copies a host file (following links) to `dest` (default: the same path)."""
        with open(src, "rb") as f:
            data = f.read()
        if mode is None:
            mode = stat.S_IMODE(os.stat(src).st_mode)
        self.file(dest or src, data, mode)

    def symlink(self, path, target):
        parent = os.path.dirname(path.strip("/"))
        if parent and parent not in self.entries:
            self.dir(parent)
        self.entries[path.strip("/")] = ("link", 0o777, 0, target)

    def copy_tree(self, src, skip=()):
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d not in skip)
            self.dir(root)
            for name in sorted(files):
                path = os.path.join(root, name)
                if os.path.islink(path) and not os.path.exists(path):
                    continue
                self.copy(path)

    def with_libraries(self, *binaries):
        """Adds the shared libraries (and the loader) each binary links, as ldd resolves them."""
        for binary in binaries:
            out = subprocess.run(["ldd", binary], capture_output=True, text=True)
            if out.returncode != 0:
                continue  # static: nothing to add
            for line in out.stdout.splitlines():
                m = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
                if m and m.group(1) not in self.entries:
                    self.copy(m.group(1), mode=0o755)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, mode, uid, data = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, 0
                info.uname = info.gname = ""
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "link":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def base_layout(layer):
    """What every image here has: the users, CA certificates, /tmp and nonroot's home."""
    layer.file("/etc/passwd", PASSWD.encode())
    layer.file("/etc/group", GROUP.encode())
    layer.copy(CA_BUNDLE, mode=0o644)
    layer.dir("/tmp", 0o1777)
    layer.dir("/home/nonroot", 0o700, NONROOT)


def blob(blobs, data):
    digest = hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_archive(path, reference, layer, config):
    layer_tar = layer.tar()
    blobs = {}
    layer_desc = blob(blobs, layer_tar)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created_by": "hack/node/images.py"}],
    }
    config_desc = blob(blobs, json.dumps(image_config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
    }
    manifest_desc = blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": reference,
                    "org.opencontainers.image.ref.name": reference.rsplit(":", 1)[1],
                },
            }
        ],
    }
    tmp = path + ".tmp"
    with tarfile.open(tmp, mode="w") as tar:

        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index, sort_keys=True).encode())
        for digest in sorted(blobs):
            add(f"blobs/sha256/{digest}", blobs[digest])
    os.replace(tmp, path)
    return manifest_desc["digest"]


def imported_from(site_packages):
    """The top-level entries of `site_packages` (packages, modules, extension modules and the
    `.libs` directories their extensions load from) that importing the Google clients loads."""
    venv = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(site_packages))))
    python = os.path.join(venv, "bin", "python")
    probe = (
        "import sys, os\n"
        "import google.cloud.bigquery, google.cloud.storage, google.auth.compute_engine, google_crc32c\n"
        "import google.api_core.client_options, google.auth.transport.requests\n"
        "root = os.path.realpath(sys.argv[1])\n"
        "seen = set()\n"
        "for m in list(sys.modules.values()):\n"
        "    f = os.path.realpath(getattr(m, '__file__', None) or '')\n"
        "    if f.startswith(root + os.sep):\n"
        "        seen.add(os.path.relpath(f, root).split(os.sep)[0])\n"
        "print('\\n'.join(sorted(seen)))\n"
    )
    out = subprocess.run([python, "-c", probe, site_packages], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"images.py: importing the Google clients from {site_packages} failed:\n{out.stderr}")
    tops = set(out.stdout.split())
    # Extension modules load their bundled libraries from a sibling `NAME.libs` directory; the
    # libraries read their own and others' versions from the `.dist-info` directories.
    for name in os.listdir(site_packages):
        if name.endswith(".dist-info") or (name.endswith(".libs") and name[: -len(".libs")] in tops):
            tops.add(name)
    tops.discard("_distutils_hack")  # the virtualenv's own setuptools shim
    return sorted(tops)


def is_static(binary):
    out = subprocess.run(["readelf", "-l", binary], capture_output=True, text=True, check=True)
    return "Requesting program interpreter" not in out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--pause", required=True)
    ap.add_argument("--fedcred", required=True)
    ap.add_argument("--alloydb-proxy", required=True)
    ap.add_argument("--site-packages", help="a virtualenv's site-packages holding google-cloud-bigquery and google-cloud-storage")
    ap.add_argument("--report", help="the report program, copied to /app/bigquery_report.py")
    ap.add_argument("--tag", default="dev")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for binary in (args.pause, args.fedcred):
        if not is_static(binary):
            sys.exit(f"images.py: {binary} is dynamically linked; the image has no libraries to load it")

    images = []

    pause = Layer()
    pause.copy(args.pause, "/pause", 0o755)
    images.append(("pause", pause, {"Entrypoint": ["/pause"], "User": "65535:65535"}))

    fedcred = Layer()
    base_layout(fedcred)
    fedcred.copy(args.fedcred, "/usr/local/bin/fedcred", 0o755)
    images.append(
        (
            "fedcred",
            fedcred,
            {
                "User": f"{NONROOT}:{NONROOT}",
                "Entrypoint": ["/usr/local/bin/fedcred"],
                "Cmd": ["controller"],
                "Env": [f"PATH={PATH}", f"SSL_CERT_FILE={CA_BUNDLE}"],
                "WorkingDir": "/home/nonroot",
            },
        )
    )

    proxy = Layer()
    base_layout(proxy)
    proxy.copy(args.alloydb_proxy, "/alloydb-auth-proxy", 0o755)
    proxy.with_libraries(args.alloydb_proxy)
    images.append(
        (
            "alloydb-auth-proxy",
            proxy,
            {"User": f"{NONROOT}:{NONROOT}", "Entrypoint": ["/alloydb-auth-proxy"], "Env": [f"PATH={PATH}"]},
        )
    )

    client = Layer()
    base_layout(client)
    python = "/usr/bin/python3"
    real_python = os.path.realpath(python)
    stdlib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    client.copy(real_python, real_python, 0o755)
    if real_python != python:
        client.symlink(python, os.path.basename(real_python))
    client.copy_tree(stdlib, skip={"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "dist-packages"})
    dynload = os.path.join(stdlib, "lib-dynload")
    extensions = [os.path.join(dynload, n) for n in sorted(os.listdir(dynload)) if n.endswith(".so")]
    psql = sorted(
        os.path.join(d, "bin", "psql")
        for d in (os.path.join("/usr/lib/postgresql", v) for v in os.listdir("/usr/lib/postgresql"))
        if os.path.exists(os.path.join(d, "bin", "psql"))
    )
    if not psql:
        sys.exit("images.py: no psql under /usr/lib/postgresql (hack/install-tools.sh installs postgresql-client)")
    client.copy(psql[-1], "/usr/bin/psql", 0o755)
    client.with_libraries(real_python, psql[-1], *extensions)
    client.symlink("/usr/bin/python", "python3")
    images.append(
        (
            "client",
            client,
            {
                "User": f"{NONROOT}:{NONROOT}",
                "Env": [f"PATH={PATH}", "HOME=/home/nonroot", "PYTHONDONTWRITEBYTECODE=1"],
                "WorkingDir": "/home/nonroot",
            },
        )
    )

    if args.site_packages and args.report:
        report = Layer()
        report.entries = dict(client.entries)
        target = "/usr/local/lib/python3/dist-packages"
        shared = []
        for top in imported_from(args.site_packages):
            src = os.path.join(args.site_packages, top)
            if os.path.isdir(src):
                for root, dirs, files in os.walk(src):
                    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                    for name in sorted(files):
                        path = os.path.join(root, name)
                        dest = os.path.join(target, os.path.relpath(path, args.site_packages))
                        report.copy(path, dest)
                        if ".so" in name:
                            shared.append(path)
            else:
                report.copy(src, os.path.join(target, top))
                if ".so" in top:
                    shared.append(src)
        report.with_libraries(*shared)
        report.copy(args.report, "/app/bigquery_report.py", 0o644)
        images.append(
            (
                "report",
                report,
                {
                    "User": f"{NONROOT}:{NONROOT}",
                    "Entrypoint": ["python3", "/app/bigquery_report.py"],
                    "Env": [f"PATH={PATH}", "HOME=/home/nonroot", "PYTHONDONTWRITEBYTECODE=1",
                            f"PYTHONPATH={target}"],
                    "WorkingDir": "/home/nonroot",
                },
            )
        )

    lines = []
    for name, layer, config in images:
        reference = f"localhost/fedcred-node/{name}:{args.tag}"
        digest = write_archive(os.path.join(args.out, f"{name}.tar"), reference, layer, config)
        lines.append(f"{name} {reference}\n")
        print(f"{name}: {reference} ({digest})")
    with open(os.path.join(args.out, "images"), "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
